"""Runtimes and timing, the one home of both: which runtimes this machine has (:mod:`.availability`), ONNX Runtime
sessions and profiles (:mod:`.ort`), ExecuTorch programs (:mod:`.executorch`), one inference as a call
(:mod:`.calls`), the glibc allocator fix (:mod:`.allocator`), and the timing primitives, quiet guard and timing
protocols (:mod:`.timing`). Profiling, the latency table, export parity and the searches all use these.
"""
