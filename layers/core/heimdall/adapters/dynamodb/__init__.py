"""The DynamoDB adapters: the registry and the deployment store, on one single-table design (``table``)."""
