"""OpenEAS's host for EAS's custom Python processors (``processor_type: python``).

``python -m openeas.processor --path DIR|ARCHIVE --entry FILE --port N [--model-path DIR]``
unpacks the processor package into the replica's folder (:mod:`openeas.processor.package`), puts
a stand-in ``allspark`` module on the path (``shim/allspark``) and serves the processor class over
HTTP (:mod:`openeas.processor.host`). A spec with ``processor_type: python`` and no containers
runs exactly this command (:mod:`openeas.spec.processor`).
"""
