"""The simulated world: topics, creators, a catalogue, the new uploads of the run and the users with
their hidden interests. Pure data, generated from one seed, so every arm of a run sees the same world.

Creators keep to a main topic (as real channels do), so a creator is a signal of a topic the way a tag
is; items carry their topic as a tag and one or two sub-tags ("cooking-tips"), so that the engine can
learn interests from tags, topics and creators alike, and only the user's reactions say which topic a
user likes: their interests are hidden (unless `onboarding` declares them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: simulated time starts here (Python API)

TOPICS = (
    "cooking", "football", "dieting", "sadness", "gaming", "travel", "music", "dance", "comedy", "pets",
    "fitness", "fashion", "beauty", "diy", "science", "history", "cars", "tech", "art", "books",
    "movies", "gardening", "finance", "parenting", "skate", "surfing", "chess", "magic", "nature", "anime",
)
SENSITIVE = ("dieting", "sadness")  # topics the engine holds back; the report counts how often they come
SUBTAGS = ("tips", "fails", "pro", "daily", "challenge", "story")
_ADJECTIVES = ("amazing", "quick", "honest", "weird", "classic", "tiny", "epic", "calm", "real", "first")

DURATION_S = (8.0, 60.0)
SOUND_SHARE = 0.3  # items that use a shared sound
ONE_TOPIC_USERS = 0.5  # the rest have two hidden interest topics


@dataclass(frozen=True)
class Item:
    id: str
    creator: str
    duration_s: float
    topic: int
    tags: tuple[str, ...]
    caption: str
    sound: str | None
    quality: float  # hidden: raises everyone's chance to finish it
    kind: str  # "catalogue", "good" or "bad" (new uploads)
    due: float  # uploads: the share of the run's views after which it arrives; 0 for the catalogue
    age_s: float  # the catalogue: how long before the run it was uploaded (past the engine's fresh window)


@dataclass(frozen=True)
class User:
    id: str
    interests: tuple[int, ...]  # hidden topics
    drift_at: int | None  # the view after which the last interest moves to `drift_to`
    drift_to: int | None
    start_s: float  # when the user arrives, seconds after the run starts

    def interests_at(self, view: int) -> tuple[int, ...]:
        """The topics the user likes at their `view`-th view (1-based)."""
        if self.drift_at is None or self.drift_to is None or view <= self.drift_at:
            return self.interests
        return (*self.interests[:-1], self.drift_to)


@dataclass(frozen=True)
class World:
    topics: tuple[str, ...]
    catalogue: tuple[Item, ...]
    uploads: tuple[Item, ...]  # by arrival
    users: tuple[User, ...]
    creators: tuple[str, ...]

    def all_items(self) -> tuple[Item, ...]:
        return self.catalogue + self.uploads


def make_world(users: int = 100, views: int = 200, items: int = 6000, new_items: int = 20,
               creators: int | None = None, drift: bool = False, seed: int = 0, skew: float = 0.0) -> World:
    """A world for `users` users who each watch `views` videos. Half the new uploads are good (high
    quality), half bad; they arrive spread over the first 70% of the run's views. `skew`: users' interest
    topics are drawn with probability proportional to 1 / rank^skew over a random order of the topics
    (0: uniform; 1: Zipf, as audiences of real topics differ in size)."""
    rng = np.random.default_rng([seed, 0])
    n_topics = len(TOPICS)
    n_creators = creators or max(n_topics, min(600, items // 8))
    creator_ids = tuple(f"c{k}" for k in range(n_creators))
    creator_topic = np.concatenate([rng.permutation(n_topics), rng.integers(0, n_topics, n_creators)])[:n_creators]
    n_sounds = max(1, items // 15)
    catalogue = tuple(_item(rng, f"v{k}", creator_topic, n_sounds, float(rng.beta(2.0, 2.0)), "catalogue", 0.0)
                      for k in range(items))
    kinds = rng.permutation(["good", "bad"] * (new_items // 2) + ["good"] * (new_items % 2))
    dues = np.sort(rng.uniform(0.05, 0.7, new_items))
    uploads = tuple(
        _item(rng, f"n{k}", creator_topic, n_sounds,
              float(rng.uniform(0.85, 1.0) if kind == "good" else rng.uniform(0.0, 0.15)), str(kind), float(due))
        for k, (kind, due) in enumerate(zip(kinds, dues, strict=True)))
    popularity = 1.0 / np.arange(1, n_topics + 1) ** skew
    weights = np.empty(n_topics)
    weights[np.random.default_rng([seed, 1]).permutation(n_topics)] = popularity / popularity.sum()
    people = tuple(_user(rng, f"u{k}", views, drift, weights) for k in range(users))
    return World(TOPICS, catalogue, uploads, people, creator_ids)


def _item(rng: np.random.Generator, item_id: str, creator_topic: np.ndarray, n_sounds: int, quality: float,
          kind: str, due: float) -> Item:
    creator = int(rng.integers(0, len(creator_topic)))
    # mostly the creator's topic; now and then another one, so that a creator is a strong hint, not a rule
    topic = int(creator_topic[creator]) if rng.random() < 0.9 else int(rng.integers(0, len(TOPICS)))
    name = TOPICS[topic]
    subs = rng.choice(len(SUBTAGS), size=int(rng.integers(1, 3)), replace=False)
    tags = (name, *(f"{name}-{SUBTAGS[s]}" for s in sorted(subs.tolist())))
    caption = f"{_ADJECTIVES[int(rng.integers(0, len(_ADJECTIVES)))]} {name} {SUBTAGS[int(subs[0])]}"
    sound = f"s{int(rng.integers(0, n_sounds))}" if rng.random() < SOUND_SHARE else None
    duration = round(float(rng.uniform(*DURATION_S)), 1)
    age = 0.0 if kind != "catalogue" else round(float(rng.uniform(3.0, 60.0)) * 86400.0)
    return Item(item_id, f"c{creator}", duration, topic, tags, caption, sound, round(quality, 4), kind, due, age)


def _user(rng: np.random.Generator, user_id: str, views: int, drift: bool, weights: np.ndarray) -> User:
    count = 1 if rng.random() < ONE_TOPIC_USERS else 2
    interests = tuple(int(t) for t in rng.choice(len(TOPICS), size=count, replace=False, p=weights))
    others = [t for t in range(len(TOPICS)) if t not in interests]
    drift_to = int(rng.choice(others))  # drawn always, so that `drift` changes nothing else of the world
    drift_at = int(rng.integers(views // 3, 2 * views // 3 + 1))
    start = round(float(rng.uniform(0.0, 600.0)), 1)
    return User(user_id, interests, drift_at if drift else None, drift_to if drift else None, start)
