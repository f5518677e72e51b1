"""How a simulated user reacts to one video: pure functions of the user's hidden interest, the video and
a random stream (no state: the driver keeps whatever the user has seen).

On-interest videos are mostly watched to the end; off-interest ones are swiped away in the first
seconds, under the engine's early-swipe line of min(2 s, 20% of the duration). A few reactions go the
other way (noise: people are not consistent), and the video's hidden quality raises the chance that
an interested viewer finishes it: what lets good new videos earn their way up. `finish_off` lets a
very good video tempt viewers who do not care for its topic too; it is off by default, as the issue's
target scenario has users swipe away from everything off-interest (5% noise aside), and the docs
report a run with it on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Behaviour:
    noise: float = 0.05  # chance that a view goes against the user's interest (either way)
    finish_base: float = 0.6  # engaged: P(finish) = finish_base + finish_quality x quality
    finish_quality: float = 0.35
    finish_off: float = 0.0  # not engaged: P(finish) = finish_off x quality^3 (a very good video, sometimes)
    like: float = 0.08  # after an engaged, finished view
    share: float = 0.02
    not_interested: float = 0.01  # after a swipe away
    swipe_gap_s: float = 1.0  # mean time between two videos (the swipe itself)


@dataclass(frozen=True)
class Reaction:
    watch_s: float
    like: bool = False
    share: bool = False
    not_interested: bool = False


def react(rng: np.random.Generator, on_interest: bool, duration_s: float, quality: float,
          behaviour: Behaviour) -> Reaction:
    """One view. Draws a fixed number of random numbers whatever the outcome, so that two arms showing
    different videos keep each user's random stream aligned (common random numbers)."""
    u_noise, u_finish, u_watch, u_like, u_share, u_ni = rng.random(6)
    engaged = on_interest != (u_noise < behaviour.noise)
    if engaged:
        finish = u_finish < behaviour.finish_base + behaviour.finish_quality * quality
    else:
        finish = u_finish < behaviour.finish_off * quality ** 3
    if finish:
        watch = duration_s * (0.95 + 0.35 * u_watch)  # some loop past the end
        return Reaction(round(watch, 2), like=engaged and u_like < behaviour.like,
                        share=engaged and u_share < behaviour.share)
    if engaged:  # a partial view: past the early-swipe line, short of a completion
        return Reaction(round(duration_s * (0.3 + 0.55 * u_watch), 2))
    watch = min(2.0, 0.2 * duration_s) * (0.1 + 0.8 * u_watch)  # an early swipe
    return Reaction(round(watch, 2), not_interested=u_ni < behaviour.not_interested)


def gap_s(rng: np.random.Generator, behaviour: Behaviour) -> float:
    """Time between the end of one video and the start of the next (the swipe, loading)."""
    return round(behaviour.swipe_gap_s * (0.5 + float(rng.random())), 2)
