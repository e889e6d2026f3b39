"""Only the C extension lives here; pyproject.toml holds the package metadata."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "herdsman.multimodal._resample",
            sources=["src/herdsman/multimodal/_resample.c"],
            # No -march flags: SIMD kernels are selected at run time (__builtin_cpu_supports).
            extra_compile_args=["-O3"],
        ),
        # A prompt's KV block keys for cache-aware routing (kv_hash.py has the numpy fallback).
        Extension(
            "herdsman.routing._kvhash",
            sources=["src/herdsman/routing/_kvhash.c"],
            extra_compile_args=["-O3"],
        ),
        # A prompt's token ids as a packed protobuf field (engines/wire.py has the fallback).
        Extension(
            "herdsman.engines._varint",
            sources=["src/herdsman/engines/_varint.c"],
            extra_compile_args=["-O3"],
        ),
    ],
)
