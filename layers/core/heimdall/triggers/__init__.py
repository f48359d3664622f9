"""Inbound events: what triggers Heimdall's event-driven Lambdas, parsed into models at the edge.

* :mod:`heimdall.triggers.s3`: S3 "Object Created" notifications (EventBridge and classic shapes,
  ``s3:TestEvent``), object keys URL-decoded in exactly one place;
* :mod:`heimdall.triggers.keys`: what an object is, by its key's layout in the ingest or artifacts bucket;
* :mod:`heimdall.triggers.batch`: AWS Batch "Batch Job State Change" events.

The models read only the fields Heimdall uses and are as lenient as the hand-written parsing they
replaced: they are shaped after Powertools' parser models (``S3EventNotificationEventBridgeModel``,
``S3RecordModel``) but do not use them, because those require fields the events reaching Heimdall do not
always carry (the emulator's and the tests' events have no ``id``, ``account`` or ``request-id``), and
importing ``aws_lambda_powertools.utilities.parser.models`` loads every service's models on the cold path.
Powertools has no model for Batch events.
"""
