#!/usr/bin/python3
"""Writes tests/fixtures/map_ties_{scores,targets,ap}.npy: the reference's AP on heavily tied scores.

Run with the system interpreter (NumPy 1.24, as the reference uses): /usr/bin/python3 scripts/make_map_ties_fixture.py
The reference ranks with np.argsort(scores)[::-1], so where a positive and a negative share a score the
AP depends on the order NumPy's introsort leaves them in. The fixture's classes quantise uniform scores
to between 2 and 2**24 levels, with positive rates from 1% to 60%, a constant column, and sorted and
reverse-sorted columns, so every tie pattern the sort can meet is exercised. ap.npy holds the
reference-style AP of every class (float64).
"""
import os

import numpy as np


def average_precision(scores, targets):
    # The reference's definition (its helper: argsort, reversed, cumulative precision at each positive).
    order = np.argsort(scores)[::-1]
    hits = targets[order] == 1
    positives = np.cumsum(hits)
    ranks = np.arange(1, len(scores) + 1)
    return (positives / ranks)[hits].sum() / (positives[-1] + 1e-8)


def main():
    rng = np.random.default_rng(2024)
    n = 5003
    columns, labels = [], []
    for levels in (2, 3, 16, 64, 256, 1024, 4096, 2 ** 16, 2 ** 24):
        for rate in (0.01, 0.05, 0.3, 0.6):
            u = rng.random(n)
            columns.append((np.floor(u * levels) / levels).astype(np.float32))
            labels.append((rng.random(n) < rate).astype(np.uint8))
    base = (np.floor(rng.random(n) * 512) / 512).astype(np.float32)
    for column in (np.full(n, 0.25, np.float32), np.sort(base), np.sort(base)[::-1].copy(), -base):
        columns.append(column)
        labels.append((rng.random(n) < 0.2).astype(np.uint8))
    scores = np.ascontiguousarray(np.stack(columns, axis=1))
    targets = np.ascontiguousarray(np.stack(labels, axis=1))
    ap = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    np.save(os.path.join(out, "map_ties_scores.npy"), scores)
    np.save(os.path.join(out, "map_ties_targets.npy"), targets)
    np.save(os.path.join(out, "map_ties_ap.npy"), ap)
    print(scores.shape, "mAP", 100 * ap.mean())


if __name__ == "__main__":
    main()
