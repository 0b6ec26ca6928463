"""The language-set files: the paper's Lang12, a balanced Lang30, readable by lslo_data_prep and --lslo-langs."""
import collections
import os

from lslo_data_prep.langsets import directions, read_langset
from fairseq_lslo.languages import LanguageInventory

LANGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lslo_data_prep", "langs")


def test_lang12_is_the_papers():
    rows = read_langset(os.path.join(LANGS, "lang12.tsv"))
    assert [(r.code, r.flores, r.group) for r in rows] == [
        ("en", "eng", "high"), ("fr", "fra", "high"), ("it", "ita", "high"), ("de", "deu", "high"),
        ("nl", "nld", "medium"), ("zh", "zho_simpl", "medium"), ("ja", "jpn", "medium"), ("ko", "kor", "medium"),
        ("oc", "oci", "low"), ("or", "ory", "low"), ("sd", "snd", "low"), ("wo", "wol", "low")]
    assert len(directions(rows)) == 132


def test_lang30_is_balanced_and_extends_lang12():
    rows = read_langset(os.path.join(LANGS, "lang30.tsv"))
    assert collections.Counter(r.group for r in rows) == {"high": 10, "medium": 10, "low": 10}
    assert len({r.flores for r in rows}) == 30
    lang12 = {(r.code, r.flores, r.group) for r in read_langset(os.path.join(LANGS, "lang12.tsv"))}
    assert lang12 <= {(r.code, r.flores, r.group) for r in rows}
    assert len(directions(rows)) == 870


def test_plugin_reads_the_same_files():
    for name in ("lang12.tsv", "lang30.tsv"):
        path = os.path.join(LANGS, name)
        inv = LanguageInventory.from_spec(path)
        assert inv.codes == [r.code for r in read_langset(path)]
        assert inv.groups == ["high", "medium", "low"]
