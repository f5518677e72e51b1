"""How high can the on-interest share over a new user's first 50 views go in the simulator's world,
for a policy that knows the world's rules but not the user? A Monte Carlo of an idealised
"sweep, then exploit" policy (docs/simulation.md, "Why views 1-50 fall short"):

- the user likes 1 topic (half of the users) or 2, out of 30, uniformly; an on-interest view is
  finished with probability 0.78 (the behaviour model's 0.6 + 0.35 x mean quality), anything else is
  swiped; 5% of views go against the interest (noise);
- the policy shows a topic it has not tried yet in every slot until it sees a completion; then it fills
  slots with the topics it saw finished, at most `cap` in a row (the engine's topic-run cap), sweeping
  on in the other slots; a swipe on a found topic drops it; it sees reactions a page at a time.

    .venv/bin/python benchmarks/sweep_bound.py
"""

from __future__ import annotations

import numpy as np

TOPICS, FINISH, NOISE = 30, 0.78, 0.05


def share(page: int, users: int = 4000, views: int = 50, cap: int = 4, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(users):
        liked = set(rng.choice(TOPICS, 1 if rng.random() < 0.5 else 2, replace=False).tolist())
        untried, found = list(rng.permutation(TOPICS)), []
        on = seen = run = 0
        last = -1
        while seen < views:
            shown = []
            for slot in range(min(page, views - seen)):
                options = [t for t in found if not (t == last and run >= cap)]
                topic = options[slot % len(options)] if options else (
                    untried.pop() if untried else int(rng.integers(TOPICS)))
                run, last = (run + 1 if topic == last else 1), topic
                shown.append(topic)
            for topic in shown:  # the page's reactions arrive together
                hit = topic in liked
                on, seen = on + hit, seen + 1
                engaged = hit != (rng.random() < NOISE)
                if engaged and rng.random() < FINISH and topic not in found:
                    found.append(topic)
                if not engaged and topic in found:
                    found.remove(topic)
        total += on / views
    return total / users


if __name__ == "__main__":
    for page in (1, 5, 10):
        print(f"pages of {page:>2}: on-interest share over views 1-50 = {share(page):.3f}")
