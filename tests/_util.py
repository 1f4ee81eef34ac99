"""Independent helpers the tests compare against."""
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                       scale: float | None = None) -> torch.Tensor:
    """Independent float64 attention under a full (B|1, H|1, Lq, Lk) bool mask; empty rows -> 0."""
    b, h, lq, d = q.shape
    g = h // k.shape[1]
    kk = k.double().repeat_interleave(g, 1)
    vv = v.double().repeat_interleave(g, 1)
    s = q.double() @ kk.transpose(-1, -2) * (scale if scale is not None else d ** -0.5)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ vv


def causal_mask(lq: int, lk: int) -> torch.Tensor:
    rows = torch.arange(lk - lq, lk)[:, None]
    return torch.arange(lk)[None, :] <= rows


class TritonLaunches:
    """Records every kernel launch under the Triton interpreter (TRITON_INTERPRET=1): ``calls``
    maps a kernel's name to its launches' {argument: value}, ``kernels`` to the kernel."""

    def __init__(self, monkeypatch) -> None:
        from triton.runtime import interpreter

        self.calls: dict[str, list[dict]] = {}
        self.kernels: dict[str, object] = {}
        run = interpreter.InterpretedFunction.run

        def recording(fn, *args, **kwargs):
            self.calls.setdefault(fn.fn.__name__, []).append(dict(zip(fn.arg_names, args)))
            self.kernels[fn.fn.__name__] = fn
            return run(fn, *args, **kwargs)

        monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording)

    def step_args(self, name: str, ignore: tuple[str, ...] = ()) -> tuple[set[str], set[str]]:
        """(int arguments of kernel ``name`` that changed between its recorded launches, those of
        them it specialises on, i.e. not named in its do_not_specialize); names starting with a
        prefix in ``ignore`` are left out."""
        calls = self.calls[name]
        varying = {a for a, x in calls[0].items() if isinstance(x, int) and not isinstance(x, bool)
                   and any(c[a] != x for c in calls) and not a.startswith(ignore)}
        return varying, varying - set(self.kernels[name].kwargs.get("do_not_specialize") or ())
