from accordion.cli import main

main()
