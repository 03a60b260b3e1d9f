"""Prints the scalars of the TensorBoard event files in a folder as JSON, read with TensorBoard's own
reader: {tag: [[step, value], ...]}. Used by trainer/tests/metrics.rs.

    python read_tensorboard.py RUN_DIR
"""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

# 0: keep every event (the default keeps a sample). Orphaned steps of a restarted run are purged, as
# TensorBoard shows them.
acc = EventAccumulator(sys.argv[1], size_guidance={SCALARS: 0}, purge_orphaned_data=True)
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}))
