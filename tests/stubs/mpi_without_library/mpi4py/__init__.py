"""A stand-in for mpi4py 4 installed without any MPI library (as on the GPU image): the package
imports, `from mpi4py import MPI` raises what mpi4py raises there."""
