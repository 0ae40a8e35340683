"""The `sim` device: CUDA C kernels built with g++ and run on the CPU (see module.py)."""
from .module import (ORDERS, Kernel, Module, SimBuildError, SimError, cache_dir, dry_run,
                     get_thread_order, record, set_shared_memory_poison, set_thread_order,
                     thread_order)

__all__ = ["ORDERS", "Kernel", "Module", "SimBuildError", "SimError", "cache_dir", "dry_run",
           "get_thread_order", "record", "set_shared_memory_poison", "set_thread_order",
           "thread_order"]
