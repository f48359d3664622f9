"""Adapters: the only modules that import boto3. They turn AWS errors into the project's typed ones."""
