"""`lorastudio keys` and `lorastudio serve` through the real entry point; the API stays torch-free."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from lorastudio.cli.main import cli


def test_keys_create_list_revoke(tmp_path):
    data = tmp_path / "d"
    created = CliRunner().invoke(cli, ["keys", "create", "--data", str(data), "--scope", "generate,train", "--name", "app"])
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("lsk_") and len(token) > 30
    from lorastudio.serving.store import JobStore, default_url

    store = JobStore(default_url(data))
    key_id, scopes = store.verify_key(token)
    listed = CliRunner().invoke(cli, ["keys", "list", "--data", str(data)])
    assert key_id in listed.output and "active" in listed.output and token not in listed.output
    assert CliRunner().invoke(cli, ["keys", "revoke", key_id, "--data", str(data)]).exit_code == 0
    assert store.verify_key(token) is None
    bad = CliRunner().invoke(cli, ["keys", "create", "--data", str(data), "--scope", "root"])
    assert bad.exit_code != 0 and "scopes must be" in bad.output


def test_the_api_process_never_imports_torch(tmp_path):
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from starlette.testclient import TestClient\n"
        "from lorastudio.serving.app import create_app\n"
        "from lorastudio.serving.http import Settings\n"
        "from lorastudio.serving.store import default_url\n"
        f"data = Path({str(tmp_path)!r})\n"
        "app = create_app(Settings(data_dir=data, db_url=default_url(data), fake_workers=True))\n"
        "_, key = app.state.store.create_key(['generate'])\n"
        "h = {'Authorization': 'Bearer ' + key}\n"
        "with TestClient(app, base_url='http://127.0.0.1') as c:\n"
        "    import time\n"
        "    while c.get('/readyz', headers=h).status_code != 200: time.sleep(0.1)\n"
        "    r = c.post('/v1/images/generations', json={'prompt': 'x', 'size': '64x64', 'steps': 2}, headers=h)\n"
        "    assert r.status_code == 200, r.text\n"
        "print('torch' in sys.modules, 'diffusers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"


def test_the_official_openai_client_works_against_a_real_server(tmp_path):
    import base64
    import io
    import time

    import httpx
    from serve_helpers import free_port
    from openai import OpenAI
    from PIL import Image

    from lorastudio.serving.store import JobStore, default_url

    data, port = tmp_path / "d", free_port()
    data.mkdir()
    _, token = JobStore(default_url(data)).create_key(["generate"])
    proc = subprocess.Popen([sys.executable, "-m", "lorastudio", "serve", "--port", str(port), "--data", str(data),
                             "--fake-workers"], env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 60
        while time.time() < end:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz",
                             headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0)
        result = client.images.generate(prompt="ohwx_kfood_style, a photo of bibimbap", size="256x256", n=2,
                                        response_format="b64_json", extra_body={"steps": 3, "seed": 5})
        assert len(result.data) == 2
        assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).format == "PNG"
        from openai import AuthenticationError

        try:
            OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).images.generate(prompt="x")
        except AuthenticationError as exc:
            assert exc.status_code == 401
        else:
            raise AssertionError("a wrong key was accepted")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
