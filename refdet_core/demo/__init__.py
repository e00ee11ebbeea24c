"""The embedded demo data set: a small, learnable version of the task in the challenge layout.

Each video is a camera flying slowly over a procedural landscape (fields, roads, trees, roofs) while
zooming gently. One target instance is visible in one or more intervals and absent in between. Every instance
is procedurally drawn: a kind's silhouette with its own proportions, any two colours and a pattern, so a set
holds as many instances as it has videos. Three kinds of distractors share the frames, so that no single cue
finds the target: *colour twins* (another kind wearing the target's colours and often its pattern), *shape
twins* (the target's kind and proportions in other colours) and unrelated objects, about half of which are
decoys, the target instances of other training videos (being a target of the set is no cue either). Next to
the target, in its frames, stand one colour twin and one shape twin. Three reference photos show the target
"from the ground": larger, rotated, foreshortened, under other light, on an indoor background. A few videos
never show their target. ``splits.json`` holds out videos whose target instances appear nowhere in the
training videos; training videos may be shorter than validation ones (``train_frames``), so that a set of
many instances stays small.

Modules: ``looks`` (an instance's appearance and its look-alikes), ``draw`` (sprites), ``landscape`` (the aerial
canvas), ``references`` (ground-level reference photos), ``scene`` (one video's camera and objects), ``render``
(frames and boxes), ``write`` (the set: assignment, sample folders, ``demo.json``).
"""

from refdet_core.demo.looks import KINDS, PATTERNS, Look
from refdet_core.demo.render import DemoError
from refdet_core.demo.write import MARKER, read_demo_marker, write_demo

__all__ = ["KINDS", "MARKER", "PATTERNS", "DemoError", "Look", "read_demo_marker", "write_demo"]
