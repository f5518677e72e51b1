"""Feed policy: what happens between ranking and the response. Pure functions and small state over
the catalogue's arrays; the feed service (foryou/feed.py) applies them in order:

- `controls`: a user's keyword filters, topic weights and "not interested" mutes;
- `exposure`: new videos' staged exposure pools;
- `explore`: the bandit over topics that picks exploration slots;
- `arrange`: the slot-by-slot selection under the adjacency, topic-run and similarity (MMR) rules.
"""

from foryou.policy.arrange import Limits, Recent, Selection, select
from foryou.policy.controls import Controls, KeywordFilter
from foryou.policy.explore import explore_topics, known_topics, topic_lift
from foryou.policy.exposure import Pools

__all__ = ["Controls", "KeywordFilter", "Limits", "Pools", "Recent", "Selection", "explore_topics",
           "known_topics", "select", "topic_lift"]
