"""One reader for language-set files: --lslo-langs FILE and data preparation read them by the same rules."""
import pytest

from fairseq_lslo.errors import LSLoConfigError, LSLoError
from fairseq_lslo.languages import LanguageInventory
from lslo_common.langset_file import LangRow, LanguageSetError, read_language_rows
from lslo_data_prep.langsets import DataPrepError, read_langset


def write(tmp_path, text, name="langs.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_two_and_three_columns_comments_and_spaces(tmp_path):
    three = write(tmp_path, "# a comment\nen\teng\thigh\n\n fr \tfra\thigh  # trailing comment\nwo\twol\tlow\n")
    assert read_language_rows(three) == [LangRow("en", "eng", "high"), LangRow("fr", "fra", "high"),
                                         LangRow("wo", "wol", "low")]
    two = write(tmp_path, "en\thigh\nwo\tlow\n", "two.tsv")
    assert read_language_rows(two) == [LangRow("en", None, "high"), LangRow("wo", None, "low")]
    # the plugin and data preparation see the same languages in the same order
    assert LanguageInventory.from_spec(three).codes == [r.code for r in read_langset(three)] == ["en", "fr", "wo"]
    assert LanguageInventory.from_spec(two).groups == ["high", "low"]


@pytest.mark.parametrize("text, message", [
    ("en\teng\thigh\nfr\n", r"langs.tsv:2: expected 'code<TAB>group' or"),
    ("en\teng\thigh\nfr\t\thigh\n", r"langs.tsv:2: expected"),
    ("en\thigh\nen\tlow\n", r"langs.tsv:2: language 'en' is listed twice"),
    ("# nothing\n\n", r"langs.tsv: no languages"),
    ("en\teng\thigh\tx\n", r"langs.tsv:1: expected"),
])
def test_one_rule_set_for_both_readers(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(LanguageSetError, match=message):
        read_language_rows(path)
    with pytest.raises(LSLoConfigError, match=message):
        LanguageInventory.from_spec(path)
    with pytest.raises(DataPrepError, match=message):
        read_langset(path)


def test_data_preparation_also_needs_flores_codes_and_two_languages(tmp_path):
    with pytest.raises(DataPrepError, match=r"langs.tsv:1: data preparation needs .* 'en' has no FLORES code"):
        read_langset(write(tmp_path, "en\thigh\nfr\thigh\n"))
    assert [r.group for r in read_langset(write(tmp_path, "en\thigh\nfr\tfra\tlow\n"), flores_optional=True)] == [
        "high", "low"]  # scoring needs the groups only
    with pytest.raises(DataPrepError, match="at least 2 languages, got 1"):
        read_langset(write(tmp_path, "en\teng\thigh\n"))
    with pytest.raises(DataPrepError, match="--langs: cannot read language set"):
        read_langset(str(tmp_path / "missing.tsv"))
    assert issubclass(DataPrepError, LSLoError) and issubclass(DataPrepError, ValueError)
