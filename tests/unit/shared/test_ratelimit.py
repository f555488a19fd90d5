"""The one token bucket, with a clock the test moves."""

from __future__ import annotations

from signalfire.ratelimit import RateLimiter, TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_a_bucket_lets_a_burst_through_then_refills_at_its_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(2.0, burst=3, clock=t.clock, sleep=t.sleep)
    assert [bucket.wait_time() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.peek() == 0.5
    assert bucket.wait_time() == 0.5  # refused: no token taken
    t.now = 0.5
    assert bucket.wait_time() == 0.0
    assert not bucket.full()
    t.now = 100.0
    assert bucket.full()  # refills to the burst, never beyond it
    assert [bucket.wait_time() for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_a_hold_stops_even_an_unlimited_bucket_until_it_ends() -> None:
    t = FakeTime()
    bucket = TokenBucket(0.0, clock=t.clock, sleep=t.sleep)
    assert bucket.wait_time() == 0.0
    bucket.hold(7.0)
    bucket.hold(2.0)  # a shorter hold does not shorten the longer one
    assert bucket.peek() == 7.0
    t.now = 7.0
    assert bucket.wait_time() == 0.0


async def test_token_bucket_spaces_messages_after_the_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(2.0, burst=3, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        await bucket.acquire()
    assert t.slept == [0.5, 0.5]
    t.now += 10
    for _ in range(3):
        await bucket.acquire()
    assert t.slept == [0.5, 0.5]


async def test_retry_after_holds_the_whole_channel() -> None:
    t = FakeTime()
    bucket = TokenBucket(0.0, clock=t.clock, sleep=t.sleep)
    await bucket.acquire()
    bucket.hold(7.0)
    await bucket.acquire()
    assert t.slept == [7.0]


def test_a_rate_limiter_keeps_a_bucket_per_key_and_forgets_full_ones() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.wait_time("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.peek("a") == 0.5
    assert limiter.wait_time("a") == 0.5
    assert limiter.peek("b") == 0.0
    assert "b" not in limiter._buckets  # a peek remembers nothing
    now[0] = 0.5
    assert limiter.wait_time("a") == 0.0
    limiter.MAX_KEYS = 2
    limiter.wait_time("b")
    now[0] = 100.0
    limiter.wait_time("c")  # a and b are full again: dropped to make room
    assert set(limiter._buckets) == {"c"}


def test_rate_zero_means_no_limit() -> None:
    limiter = RateLimiter(0.0, 1)
    assert [limiter.wait_time("a") for _ in range(100)] == [0.0] * 100
    assert limiter.peek("a") == 0.0
