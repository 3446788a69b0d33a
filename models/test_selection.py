#!/usr/bin/env python3
"""Unit tests of the deterioration model's selection (selection.py) and of how train.fit_final builds each candidate.
Run: python models/test_selection.py"""

from __future__ import annotations

import os
import sys
import unittest
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import selection as S  # noqa: E402
import train as T  # noqa: E402

HOUR = S.HOUR_MS


def result(auroc, lead5, lead7, saturated=0.0):
    return {"auroc": auroc, "lead5_delta": lead5, "lead7_delta": lead7, "saturated": saturated}


class Choose(unittest.TestCase):
    def test_a_saturated_candidate_is_never_chosen_however_long_it_leads(self):
        picked = S.choose([("mlp, unweighted", result(0.82, 0.9, 0.9, saturated=0.0002)),
                           ("logistic, unweighted", result(0.80, 0.1, 0.1))])
        self.assertEqual(picked, "logistic, unweighted")

    def test_within_the_auroc_window_the_worse_of_the_two_lead_margins_decides(self):
        # b has the best >= 5 lead but the worst >= 7 lead; c is best on the worse of the two.
        picked = S.choose([("a, unweighted", result(0.810, 0.5, -0.10)),
                           ("b, unweighted", result(0.805, 0.9, -0.20)),
                           ("c, unweighted", result(0.801, 0.3, 0.05))])
        self.assertEqual(picked, "c, unweighted")

    def test_a_candidate_more_than_0_01_below_the_best_eligible_auroc_is_not_considered(self):
        picked = S.choose([("a, unweighted", result(0.810, 0.1, 0.0)),
                           ("b, unweighted", result(0.7995, 0.9, 0.9))])
        self.assertEqual(picked, "a, unweighted")

    def test_the_auroc_window_is_measured_from_the_best_eligible_not_from_a_saturated_one(self):
        picked = S.choose([("sat, unweighted", result(0.90, 0.0, 0.0, saturated=0.01)),
                           ("a, unweighted", result(0.80, 0.0, 0.0)),
                           ("b, unweighted", result(0.795, 0.2, 0.2))])
        self.assertEqual(picked, "b, unweighted")

    def test_equal_lead_margins_go_to_the_higher_auroc(self):
        picked = S.choose([("a, unweighted", result(0.801, 0.2, 0.1)),
                           ("b, unweighted", result(0.805, 0.3, 0.1))])
        self.assertEqual(picked, "b, unweighted")


class Candidates(unittest.TestCase):
    def test_every_architecture_has_every_weight_scheme_and_names_split_back(self):
        self.assertEqual(len(S.CANDIDATES), len(S.ARCHITECTURES) * len(S.SCHEMES))
        for arch, scheme in S.CANDIDATES:
            self.assertEqual(f"{arch}, {scheme}".split(", "), [arch, scheme])
            self.assertIn(scheme, S.WEIGHTS_DOC)

    def test_fit_final_builds_the_architecture_the_candidate_names(self):
        rng = np.random.default_rng(3)
        X = rng.normal(size=(400, 6))
        y = (X[:, 0] + 0.5 * rng.normal(size=400)) > 0
        for arch, spec in S.ARCHITECTURES.items():
            m, _, _, layers = T.fit_final(arch, X, y, "deterioration")
            if spec is None:
                self.assertEqual([w.shape for w, _ in layers], [(6, 1)], arch)
            else:
                hidden, alpha = spec
                sizes = [6, *hidden, 1]
                self.assertEqual([w.shape for w, _ in layers], list(zip(sizes[:-1], sizes[1:])), arch)
                self.assertEqual(m.alpha, alpha, arch)
        # The artifact model keeps its own one-layer network whatever the deterioration candidates are.
        _, _, _, layers = T.fit_final("mlp", X, y, "artifact")
        self.assertEqual([w.shape for w, _ in layers], [(6, 16), (16, 1)])


class SampleWeights(unittest.TestCase):
    def ward(self):
        # One bed, a point every 10 min over 10 h; two deteriorations peaking at 3 h and 9 h. With a 4-h horizon the
        # first has 18 positive points (0 h to 2 h 50 min: the ward starts 3 h before its peak), the second 24.
        t = np.arange(0, 10 * HOUR, 10 * 60_000)
        events = [(0, 1 * HOUR, 3 * HOUR, "sepsis"), (0, 6 * HOUR, 9 * HOUR, "hypovolaemia")]
        y = np.zeros(len(t), bool)
        for _, _, peak, _ in events:
            y |= (peak - t > 0) & (peak - t <= 4 * HOUR)
        return SimpleNamespace(t=t, group=np.zeros(len(t), int), events=events, y=y)

    def test_weighted_schemes_keep_the_total_positive_weight_and_leave_negatives_at_one(self):
        d = self.ward()
        for scheme in S.SCHEMES:
            w = S.sample_weights(d, scheme, 4.0)
            self.assertAlmostEqual(w[d.y].sum(), d.y.sum(), places=9, msg=scheme)
            self.assertTrue(np.all(w[~d.y] == 1.0), scheme)

    def test_per_event_gives_each_deterioration_the_same_total_weight(self):
        d = self.ward()
        w = S.sample_weights(d, "per-event", 4.0)
        first = d.y & (d.t < 3 * HOUR)
        second = d.y & (d.t >= 3 * HOUR)
        self.assertNotEqual(first.sum(), second.sum())
        self.assertAlmostEqual(w[first].sum(), w[second].sum(), places=9)

    def test_early_weights_grow_with_the_time_to_the_peak(self):
        d = self.ward()
        w = S.sample_weights(d, "early", 4.0)
        pos = np.where(d.y & (d.t >= 3 * HOUR))[0]  # the second event's ramp, in time order
        self.assertTrue(np.all(np.diff(w[pos]) < 0), w[pos])


if __name__ == "__main__":
    unittest.main()
