"""Accordion: elastic HPC clusters that expand and contract with the job queue."""

__version__ = "0.1.0"
