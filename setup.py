"""cupycnn: CNN layers as hand-written CUDA kernels, launched through CuPy, emulated on the CPU."""
from setuptools import find_packages, setup

setup(
    name="cupycnn",
    version="0.1.0",
    description="Convolutional networks from hand-written CUDA kernels: CuPy on the GPU, an "
                "emulator on the CPU, NumPy references and gradient checks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ holds CUDA C, not Python; it ships inside the package as cupycnn.kernels.
    packages=find_packages(include=["cupycnn", "cupycnn.*"]) + ["cupycnn.kernels"],
    package_dir={"cupycnn": "cupycnn", "cupycnn.kernels": "kernels"},
    package_data={"cupycnn.kernels": ["*.cu", "*.cuh"], "cupycnn.sim": ["include/*.h"]},
    include_package_data=False,
    # Pillow decodes ImageFolder's photos, scikit-learn ships the Digits dataset (both imported
    # only when those classes are used).
    # matplotlib draws the end-of-training pictures, tensorboardX writes TensorBoard logs.
    # tomli reads --config files on Python 3.10 (3.11 has tomllib); threadpoolctl holds BLAS to
    # one thread where the GEMMs are too small to share (the training command's --blas-threads).
    install_requires=["numpy>=1.24", "h5py>=3.8", "Pillow>=9.1", "scikit-learn>=1.1",
                      "matplotlib>=3.6", "tensorboardX>=2.6", "tomli>=1.1; python_version<'3.11'",
                      "threadpoolctl>=3.1"],
    entry_points={"console_scripts": ["cupycnn = cupycnn.command:main"]},
    extras_require={
        "cuda12": ["cupy-cuda12x>=13.6"],
        "cuda13": ["cupy-cuda13x>=13.6"],
        "mpi": ["mpi4py>=4.0", "mpich>=4.3"],
        # Streamed datasets: libjpeg-turbo with decode-time downscaling (Pillow otherwise) and
        # CRC-32C in C for TFRecord checks (pure Python otherwise, ~100x slower).
        "data": ["simplejpeg>=1.7", "crc32c>=2.3"],
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "setuptools>=64",           # the install test builds the package without isolation
            "wheel",
            "mpi4py>=4.0",              # the data-parallel tests run CPU ranks under mpiexec
            "mpich>=4.3",
            # NVRTC, to compile every kernel for sm_80 and sm_90 without a GPU. 12.0 emits PTX
            # ISA 8.0, which every CUDA 12.x and 13.x driver loads.
            "nvidia-cuda-nvrtc-cu12==12.0.140",
            # cuobjdump -sass (which runs nvdisasm) reads the SASS of nvcc's cubins, sm_80 and
            # sm_90 (cupycnn/machine_code.py: benchmarks/kernel_report.py, the spill and SASS
            # tests). Binaries inside the wheels (nvidia/cu13/bin), no toolkit needed; pinned
            # to the pair verified against nvcc 13.0's cubins.
            "nvidia-cuda-cuobjdump==13.5.37",
            "nvidia-cuda-nvdisasm==13.5.37",
            # The optimizer and schedule tests compare against torch.optim (the specification of
            # their update rules); imported only by tests and benchmarks, never by the library.
            # On these machines pip takes the CPU build from local disk.
            "torch==2.13.0",
            "scipy>=1.10",              # scipy.ndimage: an independent check of the affine warp
            "scikit-image>=0.19",       # real photos (skimage.data) for the ImageFolder tests
            "threadpoolctl>=3.1",       # BLAS thread counts: benchmarks/digits.py reports them,
                                        # tests/test_digits_recipe.py limits them
            "simplejpeg>=1.7",          # the fast decoding path of the streamed datasets and
            "crc32c>=2.3",              # TFRecord checks, tested beside their fallbacks
        ],
    },
    zip_safe=False,
)
