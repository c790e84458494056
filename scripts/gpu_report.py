"""What the two parts of scripts/gpu_check.py share: the report they fill in (a check's result or a timing row per
step, a failing step recorded with its error instead of ending the run) and small tools (error measure, patching,
freeing memory). The checks are in gpu_checks.py, the timings in gpu_timings.py."""

import gc
from contextlib import contextmanager

import torch


@contextmanager
def peak_memory(device: torch.device, result: dict):
    """result["peak_mib"] = peak CUDA memory allocated inside the block beyond what was allocated before it."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield
    torch.cuda.synchronize(device)
    result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20


class Report:
    """Check results and timing rows; a failing step is recorded with its error instead of ending the run."""

    def __init__(self, device: torch.device):
        self.device, self.checks, self.rows = device, [], []

    def check(self, name: str, fn, tolerance: float):
        """fn() -> (error, note) or raises Skip; passes when error <= tolerance."""
        entry = {"check": name, "tolerance": tolerance}
        try:
            error, note = fn()
            entry.update(status="pass" if error <= tolerance else "FAIL", error=error, note=note)
        except Skip as reason:
            entry.update(status="skipped", note=str(reason))
        except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
            entry.update(status="ERROR", note=f"{type(error).__name__}: {first_line(error)}")
        self.checks.append(entry)
        print(f"check  {name}: {entry['status']}" + (f", error {entry['error']:.1e}" if "error" in entry else "")
              + (f" ({entry['note']})" if entry.get("note") else ""), flush=True)

    def time(self, what: str, impl: str, tokens: int, fn, note: str = "", memory: bool = False):
        """fn() -> milliseconds (or raises Skip); with memory=True also the peak CUDA memory of the call."""
        row = {"what": what, "impl": impl, "tokens": tokens, "ms": None, "peak_mib": None, "status": "ok",
               "note": note}
        try:
            if memory:
                with peak_memory(self.device, row):
                    row["ms"] = fn()
            else:
                row["ms"] = fn()
        except Skip as reason:
            row.update(status="skipped", note=str(reason))
        except torch.OutOfMemoryError as error:
            row.update(status="out of memory", note=first_line(error))
        except Exception as error:  # noqa: BLE001
            row.update(status="ERROR", note=f"{type(error).__name__}: {first_line(error)}")
        free_memory()
        self.rows.append(row)
        shown = f"{row['ms']:.3f} ms" if row["ms"] is not None else row["status"]
        print(f"time   {what} | {impl} | {tokens} tokens: {shown}"
              + (f", peak {row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else "")
              + (f" ({row['note']})" if row["note"] else ""), flush=True)

    @property
    def failed(self) -> bool:
        """A check failed or errored, or a path other than native minimax raised (native's own failures are only
        reported)."""
        return any(c["status"] in ("FAIL", "ERROR") for c in self.checks) or any(
            r["status"] == "ERROR" and not r["impl"].startswith("native") for r in self.rows)


class Skip(Exception):
    """This path cannot run on this machine (the message says why)."""


def skip(reason: str):
    raise Skip(reason)


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@contextmanager
def patched(owner, name, value):
    """owner.name = value for the duration of the block (a module's function, a config's setting, ...)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)
