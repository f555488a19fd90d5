"""SMS length is counted the way phones and carriers count it: GSM-7 septets (the extension
table's characters cost two), or UCS-2 units once any character is outside GSM-7; a message
is cut to fit the configured number of segments."""

from __future__ import annotations

import msgspec
import pytest

from signalfire.notifier.channels.base import Notification
from signalfire.notifier.channels.sms import fit, is_gsm7, segment_count, text
from tests.support.alerts import firing_alert

ALERT = firing_alert("a-1", now=1.0, fingerprint="fp", rule="DiskFull")


def with_summary(summary: str) -> Notification:
    return Notification(alert=msgspec.structs.replace(ALERT, annotations={"summary": summary}))


def test_extension_characters_cost_two_septets() -> None:
    assert segment_count("x" * 160) == 1
    assert segment_count("x" * 159 + "[") == 2  # 161 septets
    assert segment_count("x" * 156 + "[]") == 1  # exactly 160
    assert segment_count("€" * 80) == 1 and segment_count("€" * 81) == 2


def test_one_character_outside_gsm7_makes_the_message_ucs2() -> None:
    assert is_gsm7("é£¥ÄÖÑÜ§¿") and not is_gsm7("`") and not is_gsm7("Ж")
    assert segment_count("x" * 69 + "`") == 1
    assert segment_count("x" * 70 + "`") == 2  # 71 UCS-2 units
    assert segment_count("x" * 133 + "Ж") == 2  # 2 x 67
    assert segment_count("x" * 134 + "Ж") == 3
    assert segment_count("🔥" * 35) == 1 and segment_count("🔥" * 36) == 2  # two units each


def test_concatenated_segments_hold_153_septets_and_escapes_do_not_straddle() -> None:
    assert segment_count("x" * 306) == 2 and segment_count("x" * 307) == 3
    # 152 plain septets, then "[" (two) does not fit the first segment's last septet
    assert segment_count("x" * 152 + "[" + "x" * 152) == 3


def test_a_full_length_message_with_brackets_fits_one_segment() -> None:
    # the title itself has [ ] ([HIGH]): counted as characters this took two segments
    body = text(with_summary("disk [/var] " + "x" * 300))
    assert body.startswith("[HIGH] FIRING DiskFull web-1: disk [/var] x") and body.endswith("...")
    assert segment_count(body) == 1
    assert len(body) == 160 - 4  # four extension characters


def test_non_gsm_text_is_kept_and_cut_to_70_characters() -> None:
    body = text(with_summary("Диск заполнен " + "ж" * 200))
    assert "Диск заполнен" in body and segment_count(body) == 1 and len(body) == 70


def test_backticks_and_curly_quotes_become_their_gsm7_look_alikes() -> None:
    body = text(with_summary("`/var` is \u201cfull\u201d \u2013 " + "x" * 300))
    assert "'/var' is \"full\" - x" in body
    assert is_gsm7(body) and segment_count(body) == 1 and len(body) == 158  # [HIGH]: two extension


@pytest.mark.parametrize("segments", [1, 2, 3])
def test_messages_are_cut_to_the_configured_segments(segments: int) -> None:
    for filler in ("x", "[", "Ж", "🔥"):
        body = text(with_summary(filler * 1000), segments)
        assert segment_count(body) == segments and body.endswith("...")
        assert segment_count(fit(body + "y", segments)) <= segments
