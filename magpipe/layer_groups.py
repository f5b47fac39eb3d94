"""Which kind of survey layer each model input is: magnetic, radiometric, terrain, imagery.

The report scores the deployed map without each group of layers (:func:`occluded`), so a user sees
what the gamma-ray channels, the terrain or the imagery add. Groups are read from the layers'
names by default, or given in ``inputs.groups``; a layer no rule knows is a group of its own.
"""

from __future__ import annotations

import re
from dataclasses import replace

from magpipe.derived import CHANNELS
from magpipe.features import StackScaling

# name patterns (case-insensitive, the whole name) of each group; the field and its derived channels are magnetic
RULES = {
    "magnetic": r"(field|mag|tmi|rtp|gt|asa|ams|dz|thd|tilt|.*mag.*)",
    "radiometric": r"(ct|tc|k|kperc|k_?pct|eth|eu|th|u|thk|thu|uk|k_?th|u_?th|u_?k|th_?k|th_?u|dose|.*gamma.*|.*rad.*)",
    "terrain": r"(srtm|dem|dtm|elev.*|height|terrain|slope|.*srtm.*|.*dem)",
    "imagery": r"(landsat.*|sentinel.*|s2.*|aster.*|ls\d*.*|rgb.*|band.*|b\d+|.*landsat.*)",
}


def group_of(name: str) -> str:
    """The group of one input by its name: the first rule of :data:`RULES` matching the whole name (a
    trailing ``_<band>`` of a multi-band layer ignored), else the name itself."""
    if name in CHANNELS:
        return "magnetic"
    base = re.sub(r"_\d+$", "", name)
    for group, pattern in RULES.items():
        if re.fullmatch(pattern, base, flags=re.IGNORECASE):
            return group
    return name


def layer_groups(inputs: tuple[str, ...], groups: dict[str, list[str]] | None = None) -> dict[str, list[int]]:
    """Group name -> channel indices of ``inputs``, in order of first appearance.

    ``groups`` (``inputs.groups``) names the layers of some groups; a multi-band layer may be named by its
    base name (``Landsat`` for ``Landsat_1 ..``). Inputs it does not name are grouped by :func:`group_of`.
    """
    given = {}
    for group, names in (groups or {}).items():
        for n in names:
            given[n] = group
    out: dict[str, list[int]] = {}
    for c, name in enumerate(inputs):
        group = given.get(name) or given.get(re.sub(r"_\d+$", "", name)) or group_of(name)
        out.setdefault(group, []).append(c)
    return out


def occluded(scaling: StackScaling, channels: list[int]) -> StackScaling:
    """``scaling`` with ``channels`` held at 0 (their mean) wherever they are read: the model and every
    feature set see those layers as carrying nothing, without retraining the encoder."""
    return StackScaling(tuple(replace(s, clip=0.0) if c in channels else s for c, s in enumerate(scaling.channels)))
