"""The lines of a boot script (EC2 user data, a GCE startup script) that read `container.secrets`
on the VM, with the VM's own identity, into environment variables: the script holds the
references and these commands, never a value. A secret that cannot be read powers the VM off
before the worker starts (the worker never runs without it); the message names the secret only.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from fleet.secrets import parse_ref


def aws_fetches(secrets: Mapping[str, str]) -> list[str]:
    """Boot-script lines that read each secret with the instance role (in the instance's own
    region) into its variable; a secret that cannot be read powers the instance off (the worker
    never runs without it). Only the references are in the script."""
    if not secrets:
        return []
    lines = ['AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-$(curl -fsS -m 10 -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" '
             '"$IMDS/meta-data/placement/region")}', "export AWS_DEFAULT_REGION"]
    for name, raw in secrets.items():
        ref = parse_ref(raw)
        if ref.scheme == "ssm":
            fetch = (f"aws ssm get-parameter --with-decryption --name {shlex.quote(ref.target)} "
                     "--query Parameter.Value --output text")
        else:
            fetch = (f"aws secretsmanager get-secret-value --secret-id {shlex.quote(ref.target)} "
                     "--query SecretString --output text")
        lines += [f"{name}=$({fetch}) || {{ echo \"fleet: cannot read secret {name} ({ref.scheme}); "
                  'shutting down" >&2; shutdown -h now; exit 1; }', f"export {name}"]
    return lines


METADATA_TOKEN = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
SECRET_MANAGER = "https://secretmanager.googleapis.com/v1"
#: prints the value of the Secret Manager version named by $1, read with the VM's service account
SECRET_FUNCTION = (
    "fleet_secret() {\n"
    "  local token\n"
    f'  token=$(curl -fsS -m 10 -H "Metadata-Flavor: Google" {METADATA_TOKEN} | tr -d \' \\n\' '
    "| sed -n 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/p') && [ -n \"$token\" ] || return 1\n"
    f'  curl -fsS -m 30 -H "Authorization: Bearer $token" "{SECRET_MANAGER}/$1:access" | tr -d \' \\n\' '
    "| sed -n 's/.*\"data\":\"\\([^\"]*\\)\".*/\\1/p' | base64 -d\n"
    "}")


def gcp_fetches(secrets: Mapping[str, str]) -> list[str]:
    """Startup-script lines that read each secret from Secret Manager with the VM's service
    account (a metadata-server token and the REST API) into its variable; a secret that cannot be
    read powers the VM off (the worker never runs without it). Only the references are in it."""
    if not secrets:
        return []
    lines = ["set -o pipefail", SECRET_FUNCTION]
    for name, raw in secrets.items():
        target = shlex.quote(parse_ref(raw).target)
        lines += [f"{name}=$(fleet_secret {target}) || {{ echo \"fleet: cannot read secret {name} (gcp); powering "
                  'off" >&2; shutdown -h now; exit 1; }', f"export {name}"]
    return lines
