"""Which built-in rules answer which Panther rule family (panther-analysis labelled cases).

A family's case counts as "fired" when any of the mapped rules fires on its record. Families
not listed here are not covered by the built-in pack and are not measured.
"""

from __future__ import annotations

PANTHER_FAMILIES: dict[str, tuple[str, ...]] = {
    "AWS.CloudTrail.UnauthorizedAPICall": ("cis_4_01_unauthorized_api_calls",),
    "AWS.Console.LoginWithoutMFA": ("cis_4_02_console_login_without_mfa",),
    "AWS.Root.Activity": ("cis_4_03_root_account_usage",),
    "AWS.Console.RootLogin": ("cis_4_03_root_account_usage",),
    "AWS.IAM.PolicyModified": ("cis_4_04_iam_policy_changes",),
    "AWS.CloudTrail.Created": ("cis_4_05_cloudtrail_config_changes",),
    "AWS.Console.RootLoginFailed": ("cis_4_06_console_auth_failures",),
    "AWS.KMS.CustomerManagedKeyLoss": ("cis_4_07_kms_key_disabled_or_deletion",),
    "AWS.S3.BucketPolicyModified": ("cis_4_08_s3_bucket_policy_changes",),
    "AWS.ConfigService.Created": ("cis_4_09_config_changes",),
    "AWS.ConfigService.DisabledDeleted": ("cis_4_09_config_changes",),
    "AWS.EC2.SecurityGroupModified": ("cis_4_10_security_group_changes",),
    "AWS.EC2.NetworkACLModified": ("cis_4_11_nacl_changes",),
    "AWS.EC2.GatewayModified": ("cis_4_12_network_gateway_changes",),
    "AWS.EC2.RouteTableModified": ("cis_4_13_route_table_changes",),
    "AWS.EC2.VPCModified": ("cis_4_14_vpc_changes",),
    "AWS.CloudTrail.Stopped": ("cloudtrail_logging_stopped_or_deleted",),
    "AWS.CloudTrail.EventSelectorsDisabled": ("cloudtrail_event_selectors_reduced",),
    "AWS.IAM.AttachAdminUserPolicy": ("iam_admin_policy_attached",),
    "AWS.IAM.AttachAdminRolePolicy": ("iam_admin_policy_attached",),
    "AWS.IAM.CreateUser": ("iam_user_created",),
    "AWS.IAM.Backdoor.User.Keys": ("iam_access_key_created_for_other_user",),
    "AWS.CloudTrail.RootAccessKeyCreated": ("iam_root_access_key_created",),
    "AWS.CloudTrail.LoginProfileCreatedOrModified": ("iam_login_profile_for_other_user",),
    "AWS.User.Login.Profile.Modified": ("iam_login_profile_for_other_user",),
    "AWS.IAM.BackdoorRole": ("iam_role_trust_allows_aws_principals",),
    "AWS.CloudTrail.AMIModifiedForPublicAccess": ("ec2_ami_public_or_shared",),
    "AWS.CloudTrail.SnapshotMadePublic": ("ec2_snapshot_public_or_shared",),
    "AWS.RDS.SnapshotShared": ("ec2_snapshot_public_or_shared",),
    "AWS.CloudTrail.AttemptToLeaveOrg": ("organizations_leave",),
    "AWS.VPCFlow.LogsDeleted": ("vpc_flow_logs_deleted",),
    "AWS.CloudTrail.DNSLogsDeleted": ("route53_resolver_query_logs_deleted",),
    "AWS.CloudTrail.SecurityConfigurationChange": (
        "cloudtrail_logging_stopped_or_deleted",
        "guardduty_disabled",
        "securityhub_disabled",
        "cis_4_09_config_changes",
    ),
}

# Stratus Red Team detonation file (technique) -> rule that must fire on it.
STRATUS_TECHNIQUES: dict[str, str] = {
    "aws.defense-evasion.cloudtrail-delete": "cloudtrail_logging_stopped_or_deleted",
    "aws.defense-evasion.cloudtrail-stop": "cloudtrail_logging_stopped_or_deleted",
    "aws.defense-evasion.cloudtrail-event-selectors": "cloudtrail_event_selectors_reduced",
    "aws.defense-evasion.dns-delete-logs": "route53_resolver_query_logs_deleted",
    "aws.defense-evasion.organizations-leave": "organizations_leave",
    "aws.defense-evasion.vpc-remove-flow-logs": "vpc_flow_logs_deleted",
    "aws.exfiltration.ec2-security-group-open-port-22-ingress": "ec2_security_group_open_to_world",
    "aws.exfiltration.ec2-share-ami": "ec2_ami_public_or_shared",
    "aws.exfiltration.ec2-share-ebs-snapshot": "ec2_snapshot_public_or_shared",
    "aws.exfiltration.rds-share-snapshot": "ec2_snapshot_public_or_shared",
    "aws.initial-access.console-login-without-mfa": "cis_4_02_console_login_without_mfa",
    "aws.persistence.iam-backdoor-role": "iam_role_trust_allows_aws_principals",
    "aws.persistence.iam-backdoor-user": "iam_access_key_created_for_other_user",
    "aws.persistence.iam-create-admin-user": "iam_admin_policy_attached",
    "aws.persistence.iam-create-backdoor-role": "iam_role_trust_allows_aws_principals",
    "aws.persistence.iam-create-user-login-profile": "iam_login_profile_for_other_user",
    "aws.privilege-escalation.iam-update-user-login-profile": "iam_login_profile_for_other_user",
}
