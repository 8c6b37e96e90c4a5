#!/usr/bin/python3
"""Writes tests/fixtures/onecycle.json: lr and Adam beta1 at every step of PyTorch's OneCycleLR.

Run with the system interpreter (torch 1.13): /usr/bin/python3 scripts/make_onecycle_fixture.py
Each case builds torch.optim.Adam on one parameter, wraps it in OneCycleLR with the case's arguments and
records param_groups[0]['lr'] and ['betas'][0] after construction (step 0) and after each of the
total_steps scheduler.step() calls (steps 1..total_steps; the last is the value PyTorch sets after the
final training step). A configuration PyTorch refuses at some step records the step and the error.
"""
import json
import os
import sys
import warnings

import torch

CASES = [
    # The reference recipe at a few sizes: max_lr 1e-4, pct_start 0.2, cos, div 25, final_div 1e4.
    dict(max_lr=1e-4, epochs=80, steps_per_epoch=7),
    dict(max_lr=1e-4, epochs=40, steps_per_epoch=13),
    dict(max_lr=2e-4, epochs=3, steps_per_epoch=11),
    # Tiny schedules, where pct_start * total_steps - 1 is below or near zero.
    dict(max_lr=1e-4, epochs=1, steps_per_epoch=1),
    dict(max_lr=1e-4, epochs=1, steps_per_epoch=2),
    dict(max_lr=1e-4, epochs=1, steps_per_epoch=3),
    dict(max_lr=1e-4, epochs=1, steps_per_epoch=4),
    dict(max_lr=1e-4, epochs=1, steps_per_epoch=5),  # 0.2 * 5 - 1 == 0: PyTorch divides by zero at step 0
    dict(max_lr=1e-4, epochs=2, steps_per_epoch=3),
    dict(max_lr=3e-3, epochs=1, steps_per_epoch=10),
    # Other arguments of the same scheduler.
    dict(max_lr=1e-3, epochs=5, steps_per_epoch=9, pct_start=0.3, anneal_strategy="linear"),
    dict(max_lr=1e-3, epochs=4, steps_per_epoch=10, three_phase=True),
    dict(max_lr=5e-4, epochs=6, steps_per_epoch=5, div_factor=10.0, final_div_factor=100.0,
         base_momentum=0.8, max_momentum=0.9),
    dict(max_lr=1e-4, epochs=3, steps_per_epoch=8, cycle_momentum=False),
]

DEFAULTS = dict(pct_start=0.2, anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4,
                cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, three_phase=False)


def run_case(case):
    args = dict(DEFAULTS)
    args.update(case)
    total = args["epochs"] * args["steps_per_epoch"]
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=args["max_lr"], betas=(0.9, 0.999))
    out = dict(args)
    out["total_steps"] = total
    lr, beta1 = [], []
    try:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=args["max_lr"], epochs=args["epochs"], steps_per_epoch=args["steps_per_epoch"],
            pct_start=args["pct_start"], anneal_strategy=args["anneal_strategy"],
            cycle_momentum=args["cycle_momentum"], base_momentum=args["base_momentum"],
            max_momentum=args["max_momentum"], div_factor=args["div_factor"],
            final_div_factor=args["final_div_factor"], three_phase=args["three_phase"])
        for step in range(total + 1):
            if step > 0:
                sched.step()
            lr.append(opt.param_groups[0]["lr"])
            beta1.append(opt.param_groups[0]["betas"][0])
    except ZeroDivisionError as e:
        out["error_at_step"] = len(lr)
        out["error"] = "ZeroDivisionError: " + str(e)
    out["lr"] = lr
    out["beta1"] = beta1
    return out


def main():
    warnings.simplefilter("ignore")  # scheduler.step() without optimizer.step()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "tests", "fixtures", "onecycle.json")
    doc = {"generator": "scripts/make_onecycle_fixture.py", "torch": torch.__version__,
           "cases": [run_case(c) for c in CASES]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    print("wrote", path, file=sys.stderr)


if __name__ == "__main__":
    main()
