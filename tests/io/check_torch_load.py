"""Checks, with Python's torch.load, a checkpoint that asl wrote (run by checkpoint_test).

usage: check_torch_load.py same OURS REFERENCE   -- OURS must equal REFERENCE value by value, views included
       check_torch_load.py checkpoint OURS       -- OURS is asl's {"model", "num_classes", "idx_to_class"} layout
Exit code 0 when every check passes; otherwise a message on stderr and exit code 1.
"""
import collections
import sys

import torch


def fail(msg):
    print("check_torch_load: " + msg, file=sys.stderr)
    sys.exit(1)


def compare(a, b, path, storages):
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor):
            fail(f"{path}: {type(a).__name__} instead of a tensor")
        if a.dtype != b.dtype or a.shape != b.shape:
            fail(f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
        if a.stride() != b.stride() or a.storage_offset() != b.storage_offset():
            fail(f"{path}: stride/offset {a.stride()}/{a.storage_offset()} vs {b.stride()}/{b.storage_offset()}")
        if not torch.equal(a, b):
            fail(f"{path}: values differ")
        # Tensors that share a storage in the reference must share one here, and only those.
        storages.append((path, a.storage().data_ptr(), b.storage().data_ptr()))
        return
    if isinstance(b, dict):
        if not isinstance(a, dict) or list(a.keys()) != list(b.keys()):
            fail(f"{path}: keys {list(a.keys()) if isinstance(a, dict) else type(a)} vs {list(b.keys())}")
        if isinstance(b, collections.OrderedDict) != isinstance(a, collections.OrderedDict):
            fail(f"{path}: OrderedDict vs dict")
        for k in b:
            compare(a[k], b[k], f"{path}[{k!r}]", storages)
        return
    if isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            fail(f"{path}: {type(a).__name__}/{len(a)} vs {type(b).__name__}/{len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]", storages)
        return
    if type(a) is not type(b) or a != b:
        fail(f"{path}: {a!r} vs {b!r}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "same":
        ours = torch.load(sys.argv[2])
        ref = torch.load(sys.argv[3])
        storages = []
        compare(ours, ref, "root", storages)
        for i in range(len(storages)):
            for j in range(i + 1, len(storages)):
                shared_ours = storages[i][1] == storages[j][1]
                shared_ref = storages[i][2] == storages[j][2]
                if shared_ours != shared_ref:
                    fail(f"{storages[i][0]} and {storages[j][0]}: storage sharing differs from the reference")
        print("ok")
        return
    if len(sys.argv) == 3 and sys.argv[1] == "checkpoint":
        ck = torch.load(sys.argv[2])
        if list(ck.keys()) != ["model", "num_classes", "idx_to_class"]:
            fail(f"keys {list(ck.keys())}")
        if not isinstance(ck["model"], collections.OrderedDict):
            fail("model is not an OrderedDict")
        if ck["num_classes"] != 3 or ck["idx_to_class"] != {0: "cat", 1: "dog", 2: "zebra \u00fc"}:
            fail(f"metadata {ck['num_classes']!r} {ck['idx_to_class']!r}")
        model = ck["model"]
        expect = {
            "w": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8,
            "b": torch.tensor([1, -2, 3], dtype=torch.int64),
            "h": torch.tensor([0.5, -1.25], dtype=torch.float16),
            "wt": (torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8).t(),
        }
        if list(model.keys()) != list(expect.keys()):
            fail(f"model keys {list(model.keys())}")
        for k, v in expect.items():
            if model[k].dtype != v.dtype or not torch.equal(model[k], v):
                fail(f"model[{k!r}] = {model[k]!r}, expected {v!r}")
        if model["wt"].storage().data_ptr() != model["w"].storage().data_ptr():
            fail("w and its transpose wt do not share a storage")
        # A module loads it as Python users would.
        lin = torch.nn.Linear(4, 3, bias=False)
        lin.load_state_dict({"weight": model["w"]})
        print("ok")
        return
    fail(__doc__)


if __name__ == "__main__":
    main()
