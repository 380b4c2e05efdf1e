"""The deploy files: Kubernetes manifests validated offline against the Kubernetes schemas (the
kubernetes-validate package carries them), the CI files and the systemd unit parsed and checked."""

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_schemas(path):
    for doc in _docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    job = _docs(DEPLOY / "k8s" / "job-acceptance.yaml")[0]
    job["spec"]["completionMode"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_the_pods_get_what_destructive_resets_need_and_write_results():
    job = _docs(DEPLOY / "k8s" / "job-acceptance.yaml")[0]
    ds = _docs(DEPLOY / "k8s" / "daemonset-nightly.yaml")[0]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    for pod in (job["spec"]["template"]["spec"], ds["spec"]["template"]["spec"]):
        c = pod["containers"][0]
        assert c["securityContext"]["privileged"] is True and pod["serviceAccountName"] == "gpusoak"
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/sys", "/dev"} <= mounts
        hostpaths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
        assert {"/sys", "/dev"} <= hostpaths
        script = " ".join(c["args"])
        assert "--destructive" in script and '--node-name "$NODE_NAME"' in script
        assert "--scheduler k8s --apply" in script
        assert any(e["name"] == "NODE_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
                   for e in c["env"])
        assert any(t["key"] == "gpusoak.io/quarantine" for t in pod["tolerations"])  # it must reach a tainted node
    anti = job["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert "--profile nightly" in " ".join(ds["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_role_allows_exactly_cordoning_labelling_tainting_and_draining_nodes():
    docs = {d["kind"]: d for d in _docs(DEPLOY / "k8s" / "rbac.yaml")}
    rules = {(g, r): sorted(rule["verbs"]) for rule in docs["ClusterRole"]["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {("", "nodes"): ["get", "patch"], ("", "pods"): ["get", "list"],
                     ("", "pods/eviction"): ["create"], ("apps", "daemonsets"): ["get"]}
    assert docs["ClusterRoleBinding"]["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]


def _pods():
    job = _docs(DEPLOY / "k8s" / "job-acceptance.yaml")[0]
    ds = _docs(DEPLOY / "k8s" / "daemonset-nightly.yaml")[0]
    return {"acceptance": job["spec"]["template"]["spec"], "nightly": ds["spec"]["template"]["spec"]}


def test_the_grace_period_covers_a_write_deadline_a_driver_reload_and_putting_the_node_back():
    from gpusoak.soak import SoakOptions

    defaults = SoakOptions()
    for pod in _pods().values():
        assert pod["terminationGracePeriodSeconds"] >= defaults.write_timeout_s + defaults.command_timeout_s + 30


def _stubs(tmp_path):
    """kubectl, gpusoak and sleep that log their arguments: the pods' scripts run offline."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stubs = {
        "kubectl": 'echo "kubectl $*" >> "$LOG"\ncase "$1" in get) printf %s "$UNSCHEDULABLE" ;; '
                   'drain) exit "${DRAIN_EXIT:-0}" ;; esac\n',
        "gpusoak": 'echo "gpusoak $*" >> "$LOG"\n'
                   'if [ "$1" = run ] && [ -n "${HOLD:-}" ]; then\n'
                   '  trap \'echo "gpusoak stopping: putting the node back" >> "$LOG"; kill $! 2>/dev/null; exit 130\' TERM\n'
                   '  echo "gpusoak running" >> "$LOG"; /bin/sleep 30 & wait $!\nfi\n',
        # The nightly loop's second sleep (the hour after a run) ends the test's run of it.
        # Counted, not matched by its length: the first sleep (until NIGHT_HOUR) is 3600 s too when
        # the test runs in the hour before it, which ended the loop before its run.
        "sleep": 'echo "sleep $*" >> "$LOG"\n[ "$(grep -c "^sleep" "$LOG")" -ge 2 ] && kill -KILL "$PPID"\nexit 0\n',
    }
    for name, body in stubs.items():
        (bin_ / name).write_text("#!/bin/sh\n" + body)
        (bin_ / name).chmod(0o755)
    return bin_


def _run_pod(tmp_path, which, **env):
    import os
    import shutil

    pod = _pods()[which]
    c = pod["containers"][0]
    log = tmp_path / f"{which}.log"
    log.write_text("")
    base = {"PATH": f"{_stubs(tmp_path) if not (tmp_path / 'bin').exists() else tmp_path / 'bin'}:/usr/bin:/bin",
            "LOG": str(log), "NODE_NAME": "gpu-7", "RUN": "acceptance", "NIGHT_HOUR": "2", "BUDGET": "1h"}
    assert c["command"][:2] == ["/bin/sh", "-c"] and shutil.which("sh")
    # The GPU Operator's operand script (configmap-operands.yaml, tested on its own below) stands
    # in here as a stub that only says what it was asked.
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "gpu-operator-operands.sh").write_text('echo "operands $*" >> "$LOG"\n')
    script = c["args"][0].replace("/scripts/", f"{scripts}/")
    proc = subprocess.Popen(["sh", "-c", script], env={**base, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, log, os


def test_the_acceptance_pod_cordons_and_drains_before_resets_and_gives_the_node_back(tmp_path):
    proc, log, _ = _run_pod(tmp_path, "acceptance", UNSCHEDULABLE="")
    assert proc.wait(30) == 0, proc.stderr.read()
    steps = [line.split()[:2] for line in log.read_text().splitlines()]
    assert steps == [["kubectl", "get"], ["kubectl", "cordon"], ["kubectl", "drain"], ["operands", "disable"],
                     ["gpusoak", "run"], ["gpusoak", "fleet"], ["operands", "restore"], ["kubectl", "uncordon"]]
    assert "--destructive" in log.read_text().splitlines()[4]
    assert "--ignore-daemonsets" in log.read_text().splitlines()[2]


def test_the_acceptance_pod_leaves_a_node_it_did_not_cordon_cordoned(tmp_path):
    proc, log, _ = _run_pod(tmp_path, "acceptance", UNSCHEDULABLE="true")
    assert proc.wait(30) == 0, proc.stderr.read()
    assert [line.split()[1] for line in log.read_text().splitlines() if line.startswith("kubectl")] == ["get", "drain"]


def test_the_acceptance_pod_runs_nothing_destructive_when_the_drain_fails(tmp_path):
    proc, log, _ = _run_pod(tmp_path, "acceptance", UNSCHEDULABLE="", DRAIN_EXIT="1")
    assert proc.wait(30) == 1
    assert "did not drain" in proc.stderr.read()
    assert not [line for line in log.read_text().splitlines() if line.startswith("gpusoak")]
    assert log.read_text().splitlines()[-1].startswith("kubectl uncordon")


def test_a_stopped_acceptance_pod_lets_gpusoak_put_the_node_back_before_it_exits(tmp_path):
    import signal
    import time

    proc, log, _ = _run_pod(tmp_path, "acceptance", UNSCHEDULABLE="", HOLD="1")
    deadline = time.monotonic() + 20
    while "gpusoak running" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends the container's main process
    proc.wait(30)
    lines = log.read_text().splitlines()
    assert "gpusoak stopping: putting the node back" in lines, lines
    assert lines[-1].startswith("kubectl uncordon")


@pytest.mark.parametrize("cordoned", [True, False])
def test_the_nightly_pod_resets_only_on_a_node_someone_cordoned(tmp_path, cordoned):
    proc, log, _ = _run_pod(tmp_path, "nightly", UNSCHEDULABLE="true" if cordoned else "false")
    proc.wait(30)
    (run,) = [line for line in log.read_text().splitlines() if line.startswith("gpusoak run")]
    assert ("--destructive" in run) is cordoned
    assert not [line for line in log.read_text().splitlines() if line.split()[1:2] in (["cordon"], ["drain"])]
    if not cordoned:
        assert "read-only" in proc.stderr.read()


def _submit(tmp_path, gres_lines, **env):
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (tmp_path / "gres").write_text(gres_lines)
    (bin_ / "sinfo").write_text('#!/bin/sh\ncase "$*" in *"%N %G"*) cat "$GRES" ;; '
                                '*) sed "s/ .*/ idle/" "$GRES" ;; esac\n')
    (bin_ / "sbatch").write_text('#!/bin/sh\necho "$@" > "$ARGS"\necho 42\n')
    for name in ("sinfo", "sbatch"):
        (bin_ / name).chmod(0o755)
    done = subprocess.run([str(DEPLOY / "slurm" / "submit"), "-w", "n[1-2]"], capture_output=True, text=True,
                          env={"PATH": f"{bin_}:/usr/bin:/bin", "GRES": str(tmp_path / "gres"),
                               "ARGS": str(tmp_path / "args"), "GPUSOAK_RESULTS": str(tmp_path / "r"), **env})
    args = (tmp_path / "args").read_text().split() if (tmp_path / "args").exists() else []
    return done, args


def test_the_slurm_job_requests_the_nodes_gpus_and_the_whole_node(tmp_path):
    assert "#SBATCH --exclusive" in (DEPLOY / "slurm" / "gpusoak.sbatch").read_text()
    done, args = _submit(tmp_path, "n1 gpu:h100:8(S:0-1)\nn2 gpu:h100:8(S:0-1),nic:2\n")
    assert done.returncode == 0, done.stderr
    assert "--gres=gpu:8" in args


def test_the_slurm_job_refuses_nodes_with_different_gpu_counts_and_says_when_none_are_configured(tmp_path):
    done, args = _submit(tmp_path, "n1 gpu:8\nn2 gpu:a100:4\n")
    assert done.returncode == 2 and "different GPU counts" in done.stderr and args == []
    done, args = _submit(tmp_path, "n1 (null)\nn2 (null)\n")
    assert done.returncode == 0 and "no GPU GRES" in done.stderr and not [a for a in args if a.startswith("--gres")]
    done, args = _submit(tmp_path, "n1 gpu:8\nn2 gpu:a100:4\n", GPUSOAK_GPUS_PER_NODE="4")
    assert done.returncode == 0 and "--gres=gpu:4" in args


def test_github_workflow_runs_nightly_and_publishes_junit_and_html():
    wf = yaml.safe_load((DEPLOY / "ci" / "github-workflow.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["schedule"][0]["cron"] == "0 2 * * *"
    (job,) = wf["jobs"].values()
    assert "gpu" in job["runs-on"] and "self-hosted" in job["runs-on"]
    steps = {s.get("name"): s for s in job["steps"]}
    run = " ".join(s.get("run", "") for s in job["steps"])
    assert "--profile nightly" in run and "--report-dir gpusoak-report" in run
    junit = next(s for s in job["steps"] if "junit" in s.get("uses", ""))
    assert junit["with"]["report_paths"] == "gpusoak-report/junit.xml" and junit["if"] == "always()"
    upload = next(s for s in steps.values() if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "gpusoak-report/report.html" in upload["with"]["path"]


def test_gitlab_job_runs_on_a_schedule_and_reports_junit():
    ci = yaml.safe_load((DEPLOY / "ci" / "gitlab-ci.yml").read_text())
    job = ci["gpusoak-nightly"]
    assert job["tags"] == ["gpu"] and any("schedule" in r["if"] for r in job["rules"])
    assert job["artifacts"]["reports"]["junit"] == "gpusoak-report/junit.xml"
    assert "gpusoak-report/report.html" in job["artifacts"]["paths"] and job["artifacts"]["when"] == "always"
    assert any("--profile nightly" in line for line in job["script"])


def test_the_systemd_unit_runs_readmission_after_the_nvidia_services_and_applies_it():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "systemd" / "gpusoak-readmission.service").read_text())
    assert unit["Service"]["Type"] == "oneshot"
    after = unit["Unit"]["After"].split()
    assert {"nvidia-persistenced.service", "nvidia-fabricmanager.service"} <= set(after)
    assert "--profile readmission" in unit["Service"]["ExecStart"] and "--destructive" in unit["Service"]["ExecStart"]
    assert "--apply" in unit["Service"]["ExecStartPost"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = subprocess.run(["systemd-analyze", "--version"], capture_output=True) if \
        os.path.exists("/usr/bin/systemd-analyze") else None
    if analyze is not None and analyze.returncode == 0:
        done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                               str(DEPLOY / "systemd" / "gpusoak-readmission.service")], capture_output=True, text=True)
        assert "Unknown" not in done.stderr and "Invalid" not in done.stderr, done.stderr


@pytest.mark.parametrize("script", ["submit", "gpusoak.sbatch", "gpusoak-task.sh"])
def test_the_slurm_scripts_are_executable_and_parse(script):
    path = DEPLOY / "slurm" / script
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


OPERAND_LABELS = ["device-plugin", "dcgm", "dcgm-exporter", "gpu-feature-discovery", "node-status-exporter",
                  "mig-manager"]
FAKE_KUBECTL = """\
import json, re, sys
state_path = sys.argv[1]
args = sys.argv[2:]
state = json.load(open(state_path))
state["calls"].append(args)
node = state["node"]
if args[:2] == ["get", "node"]:
    kind, key = re.match(r'go-template=\\{\\{index \\.metadata\\.(\\w+) "([^"]+)"\\}\\}', args[4]).groups()
    print(node[kind].get(key, "<no value>"))
elif args[:2] == ["get", "pods"]:
    print("\\n".join(state["pods"]))
elif args[0] in ("label", "annotate"):
    kind = "labels" if args[0] == "label" else "annotations"
    for a in args[3:]:
        if a == "--overwrite":
            continue
        if a.endswith("-") and "=" not in a:
            node[kind].pop(a[:-1], None)
        else:
            k, v = a.split("=", 1)
            node[kind][k] = v
json.dump(state, open(state_path, "w"))
"""


def _operands(tmp_path, labels, pods=()):
    script = _docs(DEPLOY / "k8s" / "configmap-operands.yaml")[0]["data"]["gpu-operator-operands.sh"]
    (tmp_path / "operands.sh").write_text(script)
    (tmp_path / "fake_kubectl.py").write_text(FAKE_KUBECTL)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"node": {"labels": dict(labels), "annotations": {}}, "pods": list(pods), "calls": []}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake_kubectl.py"} {state} "$@"\n')
    (bin_dir / "kubectl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GPUSOAK_OPERANDS_TIMEOUT_S": "0"}

    def run(cmd):
        done = subprocess.run(["sh", str(tmp_path / "operands.sh"), cmd, "gpu-node-1"], env=env,
                              capture_output=True, text=True, timeout=60)
        return done, json.loads(state.read_text())
    return run


def test_the_gpu_operator_operands_are_disabled_on_the_node_for_the_run_and_put_back_after(tmp_path):
    # An admin's own value (dcgm-exporter off) and a label the node lacks both come back as they were.
    before = {"nvidia.com/gpu.deploy.device-plugin": "true", "nvidia.com/gpu.deploy.dcgm-exporter": "false",
              "nvidia.com/gpu.deploy.driver": "true", "kubernetes.io/hostname": "gpu-node-1"}
    run = _operands(tmp_path, before)
    done, state = run("disable")
    assert done.returncode == 0, done.stderr
    labels = state["node"]["labels"]
    assert all(labels[f"nvidia.com/gpu.deploy.{k}"] == "false" for k in OPERAND_LABELS)
    assert labels["nvidia.com/gpu.deploy.driver"] == "true"  # never the driver: that would unload it
    assert "device-plugin=true" in state["node"]["annotations"]["gpusoak.io/operand-labels"]
    done, state = run("restore")
    assert done.returncode == 0, done.stderr
    assert state["node"]["labels"] == before and state["node"]["annotations"] == {}
    done, again = run("restore")  # nothing saved: nothing to do
    assert done.returncode == 0 and again["node"] == state["node"]


def test_a_run_killed_before_it_restored_the_operands_leaves_what_the_next_needs(tmp_path):
    before = {"nvidia.com/gpu.deploy.device-plugin": "true"}
    run = _operands(tmp_path, before)
    run("disable")
    done, state = run("disable")  # the next pod: the saved values are the admin's, not "false"
    assert done.returncode == 0, done.stderr
    assert "device-plugin=true" in state["node"]["annotations"]["gpusoak.io/operand-labels"]
    assert run("restore")[1]["node"]["labels"] == before


def test_operand_pods_that_do_not_leave_fail_the_disable(tmp_path):
    run = _operands(tmp_path, {}, pods=["pod/nvidia-device-plugin-daemonset-x7k2p"])
    done, _ = run("disable")
    assert done.returncode != 0 and "operand pods still on gpu-node-1" in done.stderr


def test_the_pods_disable_the_operands_around_the_run_and_pass_a_stop_on_to_gpusoak():
    job = _docs(DEPLOY / "k8s" / "job-acceptance.yaml")[0]
    ds = _docs(DEPLOY / "k8s" / "daemonset-nightly.yaml")[0]
    for pod in (job["spec"]["template"]["spec"], ds["spec"]["template"]["spec"]):
        c = pod["containers"][0]
        script = " ".join(c["args"])
        disable = script.index('gpu-operator-operands.sh disable "$NODE_NAME"')
        # The operands come back after gpusoak has put the node back: directly, or through
        # give_back(), which the acceptance pod calls last.
        restore = max(script.rindex('gpu-operator-operands.sh restore "$NODE_NAME"'),
                      script.rindex("give_back") if "give_back" in script else -1)
        assert disable < script.index("gpusoak run") < script.index("gpusoak restore") < restore
        assert 'kill -TERM "$child"' in script  # gpusoak stops on SIGTERM as on Ctrl-C: finish() runs
        assert {"name": "scripts", "mountPath": "/scripts", "readOnly": True} in c["volumeMounts"]
        assert {"name": "scripts", "configMap": {"name": "gpusoak-scripts", "defaultMode": 0o555}} in pod["volumes"]
        assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0


def _report_dir(line):
    words = line.split()
    return words[words.index("--report-dir") + 1]


def test_a_requeued_slurm_task_starts_a_fresh_run_folder(tmp_path):
    # A requeue runs the task again under the same job; into the first run's folder, its run was
    # merged into that one (now refused by gpusoak). SLURM_RESTART_COUNT counts the requeues.
    stub = tmp_path / "gpusoak"
    stub.write_text('#!/bin/sh\nwhile [ "$1" != --report-dir ]; do shift; done\n'
                    'echo "$2" >> "$LOG"; echo "{}" > "$2/result.json"\n')
    stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SLURMD_NODENAME": "node1", "GPUSOAK": str(stub), "LOG": str(tmp_path / "log"),
           "GPUSOAK_RESULTS": str(tmp_path / "results"), "GPUSOAK_RUN": "acceptance"}
    task = str(DEPLOY / "slurm" / "gpusoak-task.sh")
    for restarts in (None, "1", "2"):
        extra = {"SLURM_RESTART_COUNT": restarts} if restarts else {}
        done = subprocess.run(["bash", task], env={**env, **extra}, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    folders = (tmp_path / "log").read_text().split()
    assert folders[0] == str(tmp_path / "results" / "acceptance" / "node1")
    assert len(set(folders)) == 3 and all(f.startswith(folders[0]) for f in folders)


def test_a_refused_slurm_task_does_not_pass_off_an_earlier_result_as_its_own(tmp_path):
    # The same run name submitted again: gpusoak refuses the folder (exit 2) and writes nothing;
    # the earlier run's result.json is still there and must not read as this task's success.
    stub = tmp_path / "gpusoak"
    stub.write_text('#!/bin/sh\nwhile [ "$1" != --report-dir ]; do shift; done\n'
                    'if [ -f "$2/result.json" ]; then echo "gpusoak: refused: the folder holds a run" >&2; exit 2; fi\n'
                    'echo "{}" > "$2/result.json"\n')
    stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SLURMD_NODENAME": "node1", "GPUSOAK": str(stub),
           "GPUSOAK_RESULTS": str(tmp_path / "results"), "GPUSOAK_RUN": "acceptance"}
    task = str(DEPLOY / "slurm" / "gpusoak-task.sh")
    first = subprocess.run(["bash", task], env=env, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(["bash", task], env=env, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "without a result" in again.stderr
    log = (tmp_path / "results" / "acceptance" / "node1" / "gpusoak.log").read_text()
    assert "refused" in log  # the log keeps both runs' output, the refusal after the first


@pytest.mark.parametrize("which", ["acceptance", "nightly"])
def test_each_pod_start_gets_a_run_folder_of_its_own(tmp_path, which):
    # A restarted pod (or the nightly pod restarted the same night) wrote into the folder of the run
    # before it: the folder now carries the start time to the second.
    import re

    proc, log, _ = _run_pod(tmp_path, which, UNSCHEDULABLE="true")
    proc.wait(30)
    (run,) = [line for line in log.read_text().splitlines() if line.startswith("gpusoak run")]
    base = {"acceptance": "/results/acceptance/gpu-7/", "nightly": "/var/lib/gpusoak/nightly/"}[which]
    assert re.fullmatch(re.escape(base) + r"\d{8}T\d{6}Z", _report_dir(run)), run


def test_the_ci_jobs_clear_the_last_runs_folder_before_the_run():
    # A self-hosted runner keeps its workspace, and with it last night's run, which gpusoak refuses.
    wf = yaml.safe_load((DEPLOY / "ci" / "github-workflow.yml").read_text())
    (job,) = wf["jobs"].values()
    run = next(s["run"] for s in job["steps"] if "gpusoak\" run" in s.get("run", ""))
    assert run.index("rm -rf gpusoak-report") < run.index("--report-dir gpusoak-report")
    script = yaml.safe_load((DEPLOY / "ci" / "gitlab-ci.yml").read_text())["gpusoak-nightly"]["script"]
    cleared = [i for i, line in enumerate(script) if "rm -rf gpusoak-report" in line]
    ran = [i for i, line in enumerate(script) if "--report-dir gpusoak-report" in line]
    assert cleared and ran and cleared[0] < ran[0]


def test_every_deployed_run_keeps_the_nodes_gpu_inventory_on_the_node_across_reboots():
    # A GPU that fell off the bus in a reboot fails the next run only if the inventory outlives the
    # pod or the job: on the host's /var/lib/gpusoak (docs/verdict.md, "What was not tested").
    for name, pod in _pods().items():
        c = pod["containers"][0]
        assert "--inventory /var/lib/gpusoak/inventory.json" in " ".join(c["args"]), name
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/gpusoak")
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["hostPath"]["path"] == "/var/lib/gpusoak", name
    unit = (DEPLOY / "systemd" / "gpusoak-readmission.service").read_text()
    assert "--inventory /var/lib/gpusoak/inventory.json" in unit
    task = (DEPLOY / "slurm" / "gpusoak-task.sh").read_text()
    assert '--inventory "${GPUSOAK_INVENTORY:-/var/lib/gpusoak/inventory.json}"' in task
