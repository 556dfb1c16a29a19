"""The benchmark report's targets summary: one table of every target, never a second
copy of the table a single section already printed."""

from __future__ import annotations

from bench.report import Section, Target, targets_summary


def _section(title: str, *met: bool) -> Section:
    return Section(title, targets=[Target(f"{title} goal {i}", "x", m) for i, m in enumerate(met)])


def test_one_section_gets_the_count_and_not_its_table_again() -> None:
    one = _section("subscribers", True, False, True)
    summary = targets_summary([one])
    assert "2 of 3 met." in summary
    assert "subscribers goal 0" not in summary and "| target |" not in summary
    assert "subscribers goal 0" in one.markdown()


def test_several_sections_get_every_target_in_one_table() -> None:
    summary = targets_summary([_section("a", True), _section("b", False), Section("c")])
    assert "1 of 2 met." in summary
    assert summary.count("| target |") == 1
    assert "a goal 0" in summary and "b goal 0" in summary
