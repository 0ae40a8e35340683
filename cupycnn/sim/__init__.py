"""The `sim` device: CUDA C kernels built with g++ and run on the CPU (see module.py)."""
from .module import (ORDERS, BankCount, BankCounts, Kernel, Module, SimBuildError, SimError,
                     SimMemoryError, bank_conflicts, cache_dir, dry_run, get_thread_order,
                     get_threads, memory_check, optimization_flags, record, set_memory_check,
                     set_shared_memory_poison, set_thread_order, set_threads, thread_order,
                     threads)

__all__ = ["ORDERS", "BankCount", "BankCounts", "Kernel", "Module", "SimBuildError", "SimError",
           "SimMemoryError", "bank_conflicts", "cache_dir", "dry_run", "get_thread_order",
           "get_threads", "memory_check", "optimization_flags", "record", "set_memory_check",
           "set_shared_memory_poison", "set_thread_order", "set_threads", "thread_order",
           "threads"]
