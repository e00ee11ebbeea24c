"""The speed program: full-step profiler, optimization registry, side-by-side bench.

``profiler.profile_step`` times the components of a training step; ``options.OPTIONS`` holds every
optimization with its exactness; ``bench.run_bench`` runs presets and options interleaved in one process;
``guard.run_guard`` checks that exact/close options keep the seed preset's numbers.
"""
