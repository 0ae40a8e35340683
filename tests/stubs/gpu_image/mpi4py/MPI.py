raise RuntimeError("cannot load MPI library")
