"""Feed policy applied after ranking: no two consecutive items from the same creator or with the same
sound (within a response and across consecutive ones), yielding only when nothing else remains."""

from __future__ import annotations

import numpy as np


def arrange(order: np.ndarray, creators: np.ndarray, sounds: np.ndarray, n: int,
            last_creator: int = -1, last_sound: int = -1) -> list[int]:
    """Pick `n` positions from `order` (best first), greedily taking the best one that does not
    repeat the previous item's creator or sound; when every remaining one does, take the best.
    Returns positions into `order`."""
    remaining = order.tolist()
    creators_l = creators.tolist()
    sounds_l = sounds.tolist()
    picked: list[int] = []
    prev_c, prev_s = last_creator, last_sound
    while remaining and len(picked) < n:
        choice = 0
        for k, pos in enumerate(remaining):
            if creators_l[pos] != prev_c and (sounds_l[pos] < 0 or sounds_l[pos] != prev_s):
                choice = k
                break
        pos = remaining.pop(choice)
        picked.append(pos)
        prev_c, prev_s = creators_l[pos], sounds_l[pos]
    return picked
