"""Which per-sample training loop is fastest in torch while still using torch's autograd and torch.optim?

    python scripts/torch_loop_variants.py [--steps 2000] [--rounds 5] [--dtype float64] [--threads 1]
    python scripts/torch_loop_variants.py --job-limit 10000 --rounds 7 --dtype float32   # a whole job

The per-sample homework (mnist-sigmoid-per-sample: 784-32-32-10 sigmoid, softmax cross-entropy,
SGD lr 0.003, batch 1, raw pixels) trained for --steps steps from the same weights over the same
rows by each variant below. Every variant must end with parameters bit for bit equal to the torch
twin's general train_epoch (the baseline, twin-general); one that does not is reported as "DIFFERS"
and is no candidate. CPU time per step (time.process_time), the median over --rounds interleaved
rounds (each round runs every variant once, in turn, starting one variant further on than the round
before): on a loaded machine the ratios are what count.

Variants (each a loop over the same rows, batch 1):
  twin-general     TorchTwin.train_epoch with twin.fast = False: module calls through _forward, p.grad = None,
                   no .item() (the twin's loop before the fast step)
  twin             TorchTwin.train_epoch as it runs: the fast step (forward-unhooked, inside the twin)
  textbook         nn.Sequential, optimizer.zero_grad(), loss.backward(), optimizer.step(), loss.item()
  textbook-stack   the same, the losses kept as tensors (one sync at the end, not one per step)
  zero-grad-api    modules called directly, optimizer.zero_grad(set_to_none=True) instead of p.grad = None
  bare-modules     modules called directly, p.grad = None (the twin's loop without its checks and lists)
  copy-into        bare-modules, each row copied into one preallocated (1, 784) tensor instead of a view
  functional       F.linear / torch.sigmoid on the parameters (no nn.Module __call__)
  autograd-grad    grads = torch.autograd.grad(loss, params), assigned to p.grad, optimizer.step()
  foreach          bare-modules with torch.optim.SGD(foreach=True)
  fused            bare-modules with torch.optim.SGD(fused=True) (CPU fused kernel)
  optim-functional bare-modules, torch.optim.sgd.sgd(...) (torch.optim's functional form) on the grads
  torch-func       torch.func.grad(functional_call) per step, then optimizer.step()
  jit-trace        torch.jit.trace of the Sequential, then the bare loop
  no-grad-mode     bare-modules inside torch.set_grad_enabled(True) per step (context cost)
  bare-forward     bare-modules calling Module.forward (what Module.__call__ does when no hook is registered)
  unhooked-step    bare-modules, the optimizer's step without Optimizer's profiler wrapper (record_function,
                   the step-hook loops): type(opt).step.__wrapped__, still torch.optim's no_grad step
  forward-unhooked both (what the twin's fast step does)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bprop import jobs as J
from oracles.torch_twin import TorchTwin
from reference.network import init_params
from reference.spec import preset


def build(spec, params, **opt_kw):
    twin = TorchTwin(spec, params, threads=torch.get_num_threads())
    if opt_kw:
        twin.optimizer = torch.optim.SGD(twin.params, lr=spec.optimizer.lr, **opt_kw)
    return twin


def final(twin) -> dict[str, np.ndarray]:
    return twin.get_params()


def v_twin(twin, xc, yc, fast=True):
    twin.fast = fast
    twin.train_epoch(xc.numpy(), yc.numpy(), np.arange(len(xc)), 1)


def v_textbook(twin, xc, yc, stack=False):
    model = nn.Sequential(*twin.modules)
    opt, losses = twin.optimizer, []
    for i in range(len(xc)):
        opt.zero_grad()
        loss = F.cross_entropy(model(xc[i : i + 1]), yc[i : i + 1])
        loss.backward()
        opt.step()
        losses.append(loss.detach() if stack else loss.item())
    return float(torch.stack(losses).sum()) if stack else sum(losses)


def v_bare(twin, xc, yc, zero_grad_api=False, copy_into=False, grad_ctx=False, direct=False, unhooked=False):
    mods, opt, params, losses = twin.modules, twin.optimizer, twin.params, []
    if direct:  # Module.forward itself: no __call__ (its hook checks)
        mods = [m.forward for m in mods]
    step = opt.step
    if unhooked:  # SGD.step without Optimizer's profiler wrapper (record_function, step hooks)
        step = type(opt).step.__wrapped__.__get__(opt)
    buf = torch.empty((1, xc.shape[1]), dtype=xc.dtype)
    for i in range(len(xc)):
        if copy_into:
            h = buf.copy_(xc[i : i + 1])
        else:
            h = xc[i : i + 1]
        if grad_ctx:
            with torch.set_grad_enabled(True):
                for m in mods:
                    h = m(h)
                loss = F.cross_entropy(h, yc[i : i + 1])
                loss.backward()
        else:
            for m in mods:
                h = m(h)
            loss = F.cross_entropy(h, yc[i : i + 1])
            loss.backward()
        step()
        if zero_grad_api:
            opt.zero_grad(set_to_none=True)
        else:
            for p in params:
                p.grad = None
        losses.append(loss.detach())
    return float(torch.stack(losses).sum())


def _linears(twin):
    return [m for m in twin.modules if isinstance(m, nn.Linear)]


def v_functional(twin, xc, yc):
    (l1, l2, l3), opt, params, losses = _linears(twin), twin.optimizer, twin.params, []
    for i in range(len(xc)):
        h = torch.sigmoid(F.linear(xc[i : i + 1], l1.weight, l1.bias))
        h = torch.sigmoid(F.linear(h, l2.weight, l2.bias))
        loss = F.cross_entropy(F.linear(h, l3.weight, l3.bias), yc[i : i + 1])
        loss.backward()
        opt.step()
        for p in params:
            p.grad = None
        losses.append(loss.detach())
    return float(torch.stack(losses).sum())


def v_autograd_grad(twin, xc, yc):
    mods, opt, params, losses = twin.modules, twin.optimizer, twin.params, []
    for i in range(len(xc)):
        h = xc[i : i + 1]
        for m in mods:
            h = m(h)
        loss = F.cross_entropy(h, yc[i : i + 1])
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        opt.step()
        for p in params:
            p.grad = None
        losses.append(loss.detach())
    return float(torch.stack(losses).sum())


def v_optim_functional(twin, xc, yc):
    from torch.optim.sgd import sgd

    mods, params, losses, lr = twin.modules, twin.params, [], twin.spec.optimizer.lr
    bufs = [None] * len(params)
    for i in range(len(xc)):
        h = xc[i : i + 1]
        for m in mods:
            h = m(h)
        loss = F.cross_entropy(h, yc[i : i + 1])
        loss.backward()
        with torch.no_grad():
            sgd(
                params,
                [p.grad for p in params],
                bufs,
                weight_decay=0.0,
                momentum=0.0,
                lr=lr,
                dampening=0.0,
                nesterov=False,
                maximize=False,
            )
        for p in params:
            p.grad = None
        losses.append(loss.detach())
    return float(torch.stack(losses).sum())


def v_torch_func(twin, xc, yc):
    from torch.func import functional_call, grad

    model = nn.Sequential(*twin.modules)
    names = [n for n, _ in model.named_parameters()]
    plist = [p for _, p in model.named_parameters()]
    opt = twin.optimizer

    def loss_of(ps, x, y):
        return F.cross_entropy(functional_call(model, dict(zip(names, ps)), (x,)), y)

    g_and_loss = grad(loss_of, has_aux=False)
    for i in range(len(xc)):
        grads = g_and_loss([p.detach() for p in plist], xc[i : i + 1], yc[i : i + 1])
        for p, g in zip(plist, grads):
            p.grad = g
        opt.step()
        for p in plist:
            p.grad = None
    return 0.0


def v_jit_trace(twin, xc, yc):
    model = torch.jit.trace(nn.Sequential(*twin.modules), xc[:1])
    opt, params, losses = twin.optimizer, twin.params, []
    for i in range(len(xc)):
        loss = F.cross_entropy(model(xc[i : i + 1]), yc[i : i + 1])
        loss.backward()
        opt.step()
        for p in params:
            p.grad = None
        losses.append(loss.detach())
    return float(torch.stack(losses).sum())


VARIANTS = {
    "twin-general": (lambda t, x, y: v_twin(t, x, y, fast=False), {}),
    "twin": (v_twin, {}),
    "textbook": (v_textbook, {}),
    "textbook-stack": (lambda t, x, y: v_textbook(t, x, y, stack=True), {}),
    "zero-grad-api": (lambda t, x, y: v_bare(t, x, y, zero_grad_api=True), {}),
    "bare-modules": (v_bare, {}),
    "copy-into": (lambda t, x, y: v_bare(t, x, y, copy_into=True), {}),
    "bare-forward": (lambda t, x, y: v_bare(t, x, y, direct=True), {}),
    "unhooked-step": (lambda t, x, y: v_bare(t, x, y, unhooked=True), {}),
    "forward-unhooked": (lambda t, x, y: v_bare(t, x, y, direct=True, unhooked=True), {}),
    "functional": (v_functional, {}),
    "autograd-grad": (v_autograd_grad, {}),
    "foreach": (v_bare, {"foreach": True}),
    "fused": (v_bare, {"fused": True}),
    "optim-functional": (v_optim_functional, {}),
    "torch-func": (v_torch_func, {}),
    "jit-trace": (v_jit_trace, {}),
    "no-grad-mode": (lambda t, x, y: v_bare(t, x, y, grad_ctx=True), {}),
}


def jobs_ab(rounds: int, limit: int, dtype: str) -> None:
    """A whole TrainJob (bprop.jobs.run_train, in a process set up as a validate worker) with the fast
    step and with twin.fast = False, alternating; CPU medians; the two records must be identical."""
    import oracles.torch_twin as T

    J.mark_worker_process()
    J.keep_freed_memory()
    init, fast = T.TorchTwin.__init__, {"on": True}

    def built(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.fast = fast["on"]

    T.TorchTwin.__init__ = built
    job = J.TrainJob("mnist-sigmoid-per-sample", dtype, 0, "torch", 1, limit=limit)
    cpu: dict[str, list[float]] = {"general": [], "fast": []}
    last = {}
    with J.single_threaded():
        J.run_train(J.TrainJob("mnist-sigmoid-per-sample", dtype, 0, "torch", 1, limit=200))  # data, import
        for r in range(rounds):
            for mode in ("general", "fast") if r % 2 == 0 else ("fast", "general"):
                fast["on"] = mode == "fast"
                last[mode] = J.run_train(job)
                cpu[mode].append(last[mode]["cpu_s"])
    T.TorchTwin.__init__ = init
    a, b = last["fast"], last["general"]
    same = all(np.array_equal(a["params"][-1][k], b["params"][-1][k]) for k in b["params"][-1])
    same = same and (a["train_loss_chunks"], a["test_loss"]) == (b["train_loss_chunks"], b["test_loss"])
    g, f = statistics.median(cpu["general"]), statistics.median(cpu["fast"])
    print(
        f"{dtype}: run_train torch, {limit} steps + 2 evaluations, {rounds} rounds: general {g:.2f} s, "
        f"fast {f:.2f} s CPU (median), {f / g:.2f}x, records {'identical' if same else 'DIFFER'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", action="append", choices=sorted(VARIANTS))
    p.add_argument("--job-limit", type=int, help="instead: a whole TrainJob of this many rows, fast vs general")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.job_limit:
        return jobs_ab(a.rounds, a.job_limit, a.dtype)
    spec = preset("mnist-sigmoid-per-sample", dtype=a.dtype)
    x, y, _, _ = J.load_data(spec)
    rows = np.random.default_rng(0).permutation(len(x))[: a.steps]
    xc, yc = torch.from_numpy(x[rows]), torch.from_numpy(y[rows].astype(np.int64))
    params = init_params(spec, 0)
    names = a.only or list(VARIANTS)
    if "twin-general" not in names:
        names = ["twin-general", *names]
    times: dict[str, list[float]] = {n: [] for n in names}
    outs: dict[str, dict[str, np.ndarray]] = {}
    for r in range(a.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # each round starts one further on
            fn, kw = VARIANTS[name]
            twin = build(spec, params, **kw)
            t = time.process_time()
            fn(twin, xc, yc)
            times[name].append((time.process_time() - t) / a.steps)
            outs.setdefault(name, final(twin))
    base_out = outs["twin-general"]
    same = {n: all(np.array_equal(outs[n][k], base_out[k]) for k in base_out) for n in names}
    base = statistics.median(times["twin-general"])
    print(
        f"mnist-sigmoid-per-sample {a.dtype}, {a.steps} steps, {a.rounds} rounds, torch threads {a.threads}, "
        f"torch {torch.__version__}; CPU us per step (median), ratio to the twin's general loop"
    )
    for name in sorted(names, key=lambda n: statistics.median(times[n])):
        m = statistics.median(times[name])
        print(f"  {name:17s} {1e6 * m:8.1f} us  {m / base:5.2f}x  {'bit-exact' if same[name] else 'DIFFERS'}")


if __name__ == "__main__":
    main()
