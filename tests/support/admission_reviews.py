"""AdmissionReview requests shaped as the API server sends them for a pod create through a
Deployment's ReplicaSet: defaults filled in, ``generateName`` and no name, the namespace in
the request and not in the object."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import jsonpatch

Doc = dict[str, Any]


def app_pod(annotations: dict[str, str] | None = None) -> Doc:
    """A pod of a ReplicaSet, after the API server's defaulting."""
    metadata: Doc = {
        "generateName": "web-7d9c8b6f5d-", "namespace": "shop",
        "labels": {"app": "web", "pod-template-hash": "7d9c8b6f5d"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "web-7d9c8b6f5d", "uid": str(uuid.uuid4()),
                             "controller": True, "blockOwnerDeletion": True}],
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": metadata,
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.example.invalid/web:1.0",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http",
                                               "scheme": "HTTP"},
                                   "timeoutSeconds": 1, "periodSeconds": 10,
                                   "successThreshold": 1, "failureThreshold": 3},
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "securityContext": {}, "schedulerName": "default-scheduler",
            "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
        },
        "status": {},
    }


def review(pod: Doc, *, operation: str = "CREATE", kind: str = "Pod") -> bytes:
    """The body of the API server's POST: an AdmissionReview admission.k8s.io/v1."""
    resource = {"group": "", "version": "v1", "resource": kind.lower() + "s"}
    group_kind = {"group": "", "version": "v1", "kind": kind}
    request = {
        "uid": str(uuid.uuid4()), "kind": group_kind, "resource": resource,
        "requestKind": group_kind, "requestResource": resource,
        "namespace": "shop", "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "uid": str(uuid.uuid4()),
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                "system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    return json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
                       "request": request}).encode()


def response_of(body: bytes, sent: bytes) -> Doc:
    """The response of an answered AdmissionReview, checked as the API server checks it."""
    answer = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response: Doc = answer["response"]
    assert response["uid"] == json.loads(sent)["request"]["uid"]
    assert response["allowed"] is True
    assert ("patch" in response) == ("patchType" in response)
    return response


def patched(pod: Doc, response: Doc) -> Doc:
    """The pod with the response's JSONPatch applied by the jsonpatch library."""
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: Doc = jsonpatch.JsonPatch(operations).apply(pod)
    return result
