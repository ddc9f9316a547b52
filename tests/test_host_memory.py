"""engine.host_memory: large CPU buffers are reused between frames instead of faulted in again."""
import os
import subprocess
import sys
import textwrap

import pytest

from gagavatar.engine import console, host_memory

PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from gagavatar.engine.host_memory import keep_large_buffers
    kept = keep_large_buffers() if sys.argv[1] == "keep" else False

    def frame():                        # a frame's large activations: 16-64 MiB, freed out of order
        a = torch.ones(16 << 20)
        b = torch.ones(8 << 20) + a[: 8 << 20]
        c = torch.ones(4 << 20)
        del a
        d = torch.ones(16 << 20) * 2
        return float(b[0] + c[0] + d[0])

    for _ in range(12):                 # the heap settles on a layout within a few frames
        frame()
    windows = []                        # the fewest of three windows: one stray remap does not count
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        frame(); frame()
        windows.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(kept, min(windows))
""")


def _probe(mode: str, **env) -> tuple[bool, int]:
    """``(keep_large_buffers() result, page faults of two frames after twelve, the fewest of three
    such windows)`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_buffers_are_reused_without_page_faults():
    kept, faults = _probe("keep")
    default_kept, default_faults = _probe("default")
    assert kept and not default_kept
    # a frame maps 160 MiB (40,960 pages of 4 KiB) afresh by default; the kept heap reuses them
    assert default_faults > 40000 and faults < default_faults / 10, (faults, default_faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_once_kept_it_answers_at_once(monkeypatch):
    """After it took effect, a call (the Blender add-on asks before every frame) does not look for the
    C library again."""
    assert host_memory.keep_large_buffers()
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a, **k: pytest.fail("looked for the C library again"))
    assert host_memory.keep_large_buffers()


def test_it_can_be_turned_off():
    kept, faults = _probe("keep", GAGAVATAR_KEEP_BUFFERS="0")
    assert not kept
    if sys.platform.startswith("linux"):
        assert faults > 40000


def test_the_command_lines_keep_buffers(monkeypatch):
    calls = []
    monkeypatch.setattr(console, "keep_large_buffers", lambda: calls.append(True))
    parser = console.Parser(prog="x")
    parser.set_defaults(func=lambda args: 0)
    assert console.run_command(parser.parse_args([])) == 0 and calls == [True]


def test_keeping_is_idempotent():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    assert host_memory.keep_large_buffers() and host_memory.keep_large_buffers()
