"""Action tables: eventName/eventSource → ECS category/type and OCSF class/activity.

Computed once per distinct (eventSource, eventName) and cached: the hot path is a dict lookup.
"""

from __future__ import annotations

import re
from functools import lru_cache

_VERB = re.compile(r"^[A-Z][a-z]+")

READ_VERBS = frozenset(
    {
        "Get", "List", "Describe", "Head", "Lookup", "Search", "Scan", "Query", "Select",
        "Check", "Simulate", "Validate", "Estimate", "Preview", "Download", "View", "Verify",
        "Discover", "Filter", "Test", "Read", "Batch",
    }
)  # fmt: skip
CREATE_VERBS = frozenset(
    {
        "Create", "Run", "Allocate", "Import", "Register", "Issue", "Launch", "Copy",
        "Request", "Provision", "Purchase", "Generate", "Upload", "Clone", "Publish",
    }
)  # fmt: skip
DELETE_VERBS = frozenset(
    {"Delete", "Terminate", "Deregister", "Release", "Remove", "Purge", "Schedule", "Unregister"}
)
UPDATE_VERBS = frozenset(
    {
        "Put", "Update", "Modify", "Set", "Attach", "Detach", "Associate", "Disassociate",
        "Enable", "Disable", "Add", "Tag", "Untag", "Change", "Reset", "Replace", "Stop",
        "Start", "Reboot", "Authorize", "Revoke", "Apply", "Restore", "Rotate", "Cancel",
        "Accept", "Reject", "Assign", "Unassign", "Edit", "Move", "Rename", "Restart",
        "Resume", "Suspend", "Activate", "Deactivate", "Increase", "Decrease", "Resize",
        "Recover", "Confirm", "Grant", "Retire", "Share", "Unshare", "Leave",
        "Invite", "Send", "Execute", "Invoke", "Subscribe", "Unsubscribe", "Link", "Unlink",
        "Migrate", "Import", "Promote", "Refresh", "Renew", "Swap", "Encrypt", "Decrypt",
        "Sign", "Mount", "Unmount", "Publish", "Lock", "Unlock",
    }
)  # fmt: skip


def verb(event_name: str) -> str:
    m = _VERB.match(event_name)
    return m.group(0) if m else ""


# ----------------------------------------------------------------------- OCSF

API_ACTIVITY = 6003
AUTHENTICATION = 3002
ACCOUNT_CHANGE = 3001

CLASS_NAMES = {
    API_ACTIVITY: ("API Activity", 6, "Application Activity"),
    AUTHENTICATION: ("Authentication", 3, "Identity & Access Management"),
    ACCOUNT_CHANGE: ("Account Change", 3, "Identity & Access Management"),
}

ACTIVITY_NAMES = {
    API_ACTIVITY: {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
    AUTHENTICATION: {
        0: "Unknown",
        1: "Logon",
        2: "Logoff",
        3: "Authentication Ticket",
        4: "Service Ticket Request",
        5: "Service Ticket Renew",
        6: "Preauth",
        99: "Other",
    },
    ACCOUNT_CHANGE: {
        0: "Unknown",
        1: "Create",
        2: "Enable",
        3: "Password Change",
        4: "Password Reset",
        5: "Disable",
        6: "Delete",
        7: "Attach Policy",
        8: "Detach Policy",
        9: "Lock",
        10: "MFA Factor Enable",
        11: "MFA Factor Disable",
        99: "Other",
    },
}

# Authentication (3002): sign-in events and the STS calls that mint a session.
STS_LOGON = frozenset(
    {
        "AssumeRole",
        "AssumeRoleWithSAML",
        "AssumeRoleWithWebIdentity",
        "AssumeRoot",
        "GetSessionToken",
        "GetFederationToken",
    }
)
SIGNIN_ACTIVITY = {"ConsoleLogin": 1, "SwitchRole": 1, "ExitRole": 2, "ConsoleLogout": 2}

# Account Change (3001): IAM user/role/group/policy changes.
_AC: dict[int, tuple[str, ...]] = {
    1: (
        "CreateUser", "CreateRole", "CreateServiceLinkedRole", "CreateGroup",
        "CreateLoginProfile", "CreateAccessKey", "CreatePolicy", "CreatePolicyVersion",
        "CreateInstanceProfile", "CreateSAMLProvider", "CreateOpenIDConnectProvider",
        "CreateVirtualMFADevice", "CreateServiceSpecificCredential",
    ),
    3: ("ChangePassword",),
    4: ("UpdateLoginProfile",),
    6: (
        "DeleteUser", "DeleteRole", "DeleteServiceLinkedRole", "DeleteGroup",
        "DeleteLoginProfile", "DeleteAccessKey", "DeletePolicy", "DeletePolicyVersion",
        "DeleteInstanceProfile", "DeleteSAMLProvider", "DeleteOpenIDConnectProvider",
        "DeleteVirtualMFADevice", "DeleteServiceSpecificCredential", "DeleteSSHPublicKey",
        "DeleteSigningCertificate",
    ),
    7: (
        "AttachUserPolicy", "AttachRolePolicy", "AttachGroupPolicy", "PutUserPolicy",
        "PutRolePolicy", "PutGroupPolicy", "AddUserToGroup", "AddRoleToInstanceProfile",
        "PutUserPermissionsBoundary", "PutRolePermissionsBoundary",
    ),
    8: (
        "DetachUserPolicy", "DetachRolePolicy", "DetachGroupPolicy", "DeleteUserPolicy",
        "DeleteRolePolicy", "DeleteGroupPolicy", "RemoveUserFromGroup",
        "RemoveRoleFromInstanceProfile", "DeleteUserPermissionsBoundary",
        "DeleteRolePermissionsBoundary",
    ),
    10: ("EnableMFADevice", "ResyncMFADevice"),
    11: ("DeactivateMFADevice",),
}  # fmt: skip
ACCOUNT_CHANGE_ACTIVITY = {name: act for act, names in _AC.items() for name in names}
_IAM_SUBJECTS = (
    "User", "Role", "Group", "Policy", "LoginProfile", "AccessKey", "MFA", "InstanceProfile",
    "Password", "SSHPublicKey", "SigningCertificate", "ServiceSpecificCredential",
)  # fmt: skip


@lru_cache(maxsize=8192)
def ocsf_class(source: str, name: str, read_only: bool) -> tuple[int, int]:
    """(class_uid, activity_id) for one (eventSource, eventName)."""
    if source == "signin.amazonaws.com":
        return AUTHENTICATION, SIGNIN_ACTIVITY.get(name, 99)
    if source == "sts.amazonaws.com" and name in STS_LOGON:
        return AUTHENTICATION, 1
    if source == "iam.amazonaws.com":
        act = ACCOUNT_CHANGE_ACTIVITY.get(name)
        if act is not None:
            return ACCOUNT_CHANGE, act
        v = verb(name)
        if v not in READ_VERBS and any(s in name for s in _IAM_SUBJECTS):
            return ACCOUNT_CHANGE, 99
    v = verb(name)
    if v in CREATE_VERBS:
        return API_ACTIVITY, 1
    if v in READ_VERBS:
        return API_ACTIVITY, 2
    if v in UPDATE_VERBS:
        return API_ACTIVITY, 3
    if v in DELETE_VERBS:
        return API_ACTIVITY, 4
    if read_only:
        return API_ACTIVITY, 2
    return API_ACTIVITY, 99


# ----------------------------------------------------------------------- ECS

AUTH_START = frozenset({"ConsoleLogin", "SwitchRole", "GetSigninToken", *STS_LOGON})
AUTH_END = frozenset({"ExitRole", "ConsoleLogout"})
_S3_DATA = ("Object", "MultipartUpload", "Part")
_S3_CREATE = frozenset(
    {"PutObject", "CopyObject", "CreateMultipartUpload", "CompleteMultipartUpload", "UploadPart"}
)
_EC2_START = frozenset({"RunInstances", "StartInstances", "RebootInstances"})
_EC2_END = frozenset({"StopInstances", "TerminateInstances"})
_ACCESS_NAMES = frozenset(
    {
        "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair",
        "GetSecretValue", "BatchGetSecretValue", "GetParameter", "GetParameters",
        "GetParametersByPath", "GetPasswordData", "GetObject", "SelectObjectContent",
        "GetConsoleOutput", "GetConsoleScreenshot",
    }
)  # fmt: skip


def _verb_type(name: str) -> str:
    if name in _ACCESS_NAMES:
        return "access"
    v = verb(name)
    if v in READ_VERBS:
        return "info"
    if v in CREATE_VERBS:
        return "creation"
    if v in DELETE_VERBS:
        return "deletion"
    return "change"


# IAM entity of an action, for event.type: a group action when a group is what changes
# (AddUserToGroup, AttachGroupPolicy), else a user action for the user's credentials.
_IAM_USER_NOUNS = (
    "User", "LoginProfile", "AccessKey", "Password", "MFADevice", "SSHPublicKey",
    "SigningCertificate", "ServiceSpecificCredential",
)  # fmt: skip
_IAM_SOURCES = frozenset(
    {
        "iam.amazonaws.com",
        "sso.amazonaws.com",
        "identitystore.amazonaws.com",
        "sso-directory.amazonaws.com",
    }
)
_S3_BUCKET_LIFECYCLE = frozenset({"CreateBucket", "DeleteBucket"})


def _iam_types(name: str, vt: str) -> tuple[str, ...]:
    if "Group" in name and "ForUser" not in name:
        return ("group", vt)
    if any(noun in name for noun in _IAM_USER_NOUNS):
        return ("user", vt)
    if vt != "info" and ("Policy" in name or "PermissionsBoundary" in name):
        return ("admin", vt)
    return (vt,)


@lru_cache(maxsize=8192)
def ecs_category(source: str, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(event.category, event.type) per action family, as Elastic's CloudTrail integration
    sets them where it does (sign-in and STS: authentication/info; IAM: iam + user/group +
    the verb; S3 objects and bucket create/delete: file), the verb type elsewhere."""
    if source == "signin.amazonaws.com":
        if name in AUTH_END:
            return ("authentication", "session"), ("end",)
        if name == "SwitchRole":
            return ("authentication", "session"), ("start",)
        return ("authentication",), ("info",)
    if source == "sts.amazonaws.com":
        if name in AUTH_START or name.startswith("AssumeRole"):
            return ("authentication",), ("info",)
        return ("iam",), ("info",)
    vt = _verb_type(name)
    if source in _IAM_SOURCES:
        return ("iam",), _iam_types(name, vt)
    if source == "s3.amazonaws.com":
        if any(p in name for p in _S3_DATA):
            return ("file",), ("creation",) if name in _S3_CREATE else (vt,)
        if name in _S3_BUCKET_LIFECYCLE:
            return ("file",), (vt,)
        return ("configuration",), (vt,)
    if source == "ec2.amazonaws.com":
        if name in _EC2_START:
            return ("host",), ("start",)
        if name in _EC2_END:
            return ("host",), ("end",)
        if "SecurityGroup" in name or "NetworkAcl" in name or "Route" in name:
            return ("network", "configuration"), (vt,)
        return ("configuration",), (vt,)
    if source == "kms.amazonaws.com":
        if vt == "access" or name in ("Encrypt", "ReEncrypt", "Sign", "Verify"):
            return ("configuration",), ("access",)
        return ("configuration",), (vt,)
    return ("configuration",), (vt,)
