"""The lake on AWS: set-up as code (bucket, Glue database, Athena workgroup, IAM policies) and a look at it.

``plan`` (pure: names, settings, policy documents), ``client`` (boto3 calls, one-line errors),
``setup`` (apply and status), ``explore`` (ls, tables, query), ``commands`` (the CLI's ``aws``).
"""
