"""What importing koe loads: the SageMaker handler and `koe deploy` start without FastAPI or CTranslate2, and the
package's public names stay what they are (each resolves, lazily, to the object its module defines)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import koe

HEAVY = ("fastapi", "starlette", "uvicorn", "ctranslate2", "faster_whisper")


def loaded_after(code: str) -> set[str]:
    """The heavy top-level packages in `sys.modules` after running `code` in a fresh interpreter."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import sys
        print("LOADED", *sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r})))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    last = done.stdout.splitlines()[-1].split()  # after whatever `code` printed
    assert last[0] == "LOADED", done.stdout[-500:]
    return set(last[1:])


def test_handler_loads_no_http_server_and_no_ctranslate2() -> None:
    assert loaded_after("import koe.handler") == set()


def test_deploy_help_loads_no_http_server_and_no_ctranslate2() -> None:
    code = """
        from koe.cli import app
        try:
            app(["deploy", "--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        """
    assert loaded_after(code) == set()


def test_the_probe_sees_what_is_loaded() -> None:
    # The two tests above would pass on a probe that saw nothing: this one shows it sees FastAPI and CTranslate2.
    assert loaded_after("import koe.api.app, koe.engine") >= {"fastapi", "starlette", "ctranslate2", "faster_whisper"}


def test_koe_public_names_are_pinned() -> None:
    assert sorted(koe.__all__) == [
        "Audio",
        "AudioLimits",
        "AudioTooLongError",
        "Client",
        "EmptyInputError",
        "Engine",
        "EngineError",
        "InputError",
        "InputTooLargeError",
        "KoeError",
        "ModelError",
        "NoAudioStreamError",
        "OptionsError",
        "Segment",
        "Settings",
        "TranscribeOptions",
        "Transcript",
        "UndecodableAudioError",
        "UnknownModelError",
        "Word",
        "decode",
        "parse_options",
        "render",
    ]


def test_every_public_name_resolves_to_its_module_object() -> None:
    from koe import audio, client, config, engine, errors, formats, options, transcript

    modules = (audio, client, config, engine, errors, formats, options, transcript)
    for name in koe.__all__:
        value = getattr(koe, name)
        assert any(getattr(module, name, None) is value for module in modules), name


def test_api_package_names_resolve() -> None:
    import koe.api
    from koe.api import app

    assert koe.api.create_app is app.create_app
    assert koe.api.DEFAULT_ROUTERS is app.DEFAULT_ROUTERS


def test_languages_are_faster_whispers() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    from koe.options import LANGUAGES

    assert tuple(_LANGUAGE_CODES) == LANGUAGES
