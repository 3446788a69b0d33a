#!/usr/bin/env python3
"""Unit tests of the evaluation's alert-onset counting (report.py). Run: python models/test_report.py"""

from __future__ import annotations

import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402


def brute_force_threshold(groups, times, scores, budget):
    """The amended rule written the slow way: thresholds from the highest score down, stop before the first whose
    onset count exceeds the budget."""
    best = (float("inf"), 0)
    for t in sorted(set(scores.tolist()), reverse=True):
        n = report.alert_onsets(groups, times, scores >= t)
        if n > budget:
            break
        best = (t, n)
    return best


class AlertOnsets(unittest.TestCase):
    def test_counts_crossings_from_below_and_first_points_per_patient(self):
        # Patient 1 (given out of time order): in, in, out, in -> 2 onsets. Patient 2: out, in, in -> 1 onset.
        groups = np.array([1, 1, 1, 1, 2, 2, 2])
        times = np.array([30, 0, 20, 10, 0, 10, 20])
        alerts = np.array([True, True, False, True, False, True, True])
        self.assertEqual(report.alert_onsets(groups, times, alerts), 3)

    def test_a_patient_in_alert_at_its_first_point_is_an_onset_even_if_the_previous_patient_ended_in_alert(self):
        groups = np.array([1, 1, 2, 2])
        times = np.array([0, 10, 0, 10])
        self.assertEqual(report.alert_onsets(groups, times, np.array([False, True, True, True])), 2)

    def test_the_scan_stops_before_the_count_first_exceeds_the_budget_not_at_the_always_on_threshold(self):
        # One patient flickering: scores 0.1 0.9 0.2 0.8 0.3 0.7. Onsets by threshold: 0.9 -> 1, 0.8 -> 2, 0.7 -> 3,
        # 0.3 -> 3, 0.2 -> 2, 0.1 -> 1 (always on). With a budget of 2 the rule must stop at 0.8, although the
        # always-on 0.1 is also within the budget.
        groups = np.zeros(6, dtype=int)
        times = np.arange(6)
        scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
        self.assertEqual(report.onset_matched_threshold(groups, times, scores, 2), (0.8, 2))
        self.assertEqual(report.onset_matched_threshold(groups, times, scores, 3), (0.1, 1))
        self.assertEqual(report.onset_matched_threshold(groups, times, scores, 0), (float("inf"), 0))

    def test_the_fast_scan_agrees_with_the_slow_one_on_random_wards(self):
        rng = np.random.default_rng(7)
        for trial in range(200):
            n = int(rng.integers(1, 60))
            groups = rng.integers(0, 5, size=n)
            times = rng.permutation(n)
            scores = np.round(rng.random(n), 1 if trial % 2 else 3)  # ties on every other trial
            budget = int(rng.integers(0, 12))
            self.assertEqual(report.onset_matched_threshold(groups, times, scores, budget),
                             brute_force_threshold(groups, times, scores, budget), (trial, budget))


if __name__ == "__main__":
    unittest.main()
