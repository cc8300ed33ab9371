/* Monte-Carlo estimate of pi across MPI ranks (the thesis' Appendix B test job). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long samples = argc > 1 ? atol(argv[1]) : 2000000;
    int pause = argc > 2 ? atoi(argv[2]) : 0; /* keep the job running this many seconds */
    int rank, size;
    char host[256];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host);
    unsigned int seed = 12345u + 7919u * (unsigned int)rank;
    long inside = 0;
    for (long i = 0; i < samples; i++) {
        double x = (double)rand_r(&seed) / RAND_MAX, y = (double)rand_r(&seed) / RAND_MAX;
        if (x * x + y * y <= 1.0) inside++;
    }
    printf("rank %d of %d on %s\n", rank, size, host);
    fflush(stdout);
    if (pause > 0) sleep((unsigned int)pause);
    long total = 0;
    MPI_Reduce(&inside, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("pi is approximately %.6f (%d ranks, %ld samples)\n", 4.0 * total / ((double)samples * size), size, samples * size);
    MPI_Finalize();
    return 0;
}
