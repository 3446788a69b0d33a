#!/usr/bin/env python3
"""Is the first-event-task gain of the long-history groups only their time-since-cohort-start encoders?

Training cohorts 101-103 only (held-out never loaded), per-event weighted logistic regression, leave-one-cohort-out
as long_history.py: the 52 committed features, 52 + history_frac_8h/12h alone, and 52 + hours since the cohort
started, on all points and on the first-event task (post-event points removed). Cohorts as in long_history.py.
"""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import long_history as E  # noqa: E402  (sets the thread environment and the path to models/)
import long_history_diag as D  # noqa: E402

import numpy as np  # noqa: E402

import cohort as C  # noqa: E402

SEEDS = [101, 102, 103]


def main() -> int:
    base, extra, post = {}, {}, {}
    names = None
    for i, s in enumerate(SEEDS):
        c = C.load(f"train-{s}", os.path.join(D.WORK, f"train-{s}"))
        d = C.deterioration_dataset(c, i, E.HORIZON_H, E.STEP_MIN)
        names, ex = E.long_features(c, d, i)
        base[s], extra[s], post[s] = d, ex, D.post_event_mask(c, d)
    sl = names["slope_8h_12h"]
    frac = [sl.index("history_frac_8h"), sl.index("history_frac_12h")]
    candidates = (
        ("a", lambda s: base[s].X),
        ("52 + history_frac_8h/12h only",
         lambda s: np.column_stack([base[s].X, extra[s]["slope_8h_12h"][:, frac]])),
        ("52 + hours since cohort start",
         lambda s: np.column_stack([base[s].X, (base[s].t - base[s].t.min()) / 3.6e6])),
    )
    for task in ("all", "first"):
        ref = None
        for label, fn in candidates:
            dets = {s: E.with_X(base[s], fn(s)) for s in SEEDS}
            if task == "first":
                dets = {s: D.subset(dets[s], ~post[s]) for s in SEEDS}
            r, _, preds = E.loco(dets, SEEDS, "per-event")
            gain = ""
            if ref is None:
                ref = preds
            else:
                gain = " dAUC vs a %+.4f [%+.4f,%+.4f]" % E.paired_auc_boot(dets, SEEDS, ref, preds, n=200)
            E.log(f"{task:5s} {label:32s} AUROC {r['auroc']:.4f} NEWS2 {r['auroc_news2']:.4f}{gain} "
                  f"lead@5 {r['lead5_model']:.2f} v {r['lead5_news2']:.2f} "
                  f"lead@7 {r['lead7_model']:.2f} v {r['lead7_news2']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
