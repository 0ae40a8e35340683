"""Stand-ins for what the GPU image has (tests/stubs/gpu_image on PYTHONPATH): mpi4py 4 installed
without any MPI library (the package imports, `from mpi4py import MPI` raises what mpi4py raises
there), and no tensorboardX."""
