"""The Kubernetes side: the Kopf operator, the commit pod's entrypoint and the objects they make.

The engine (``icechunk_operator.engine``) knows nothing of Kubernetes; everything here turns
resources into engine calls and engine reports into status. Pure decisions (what to create, which
batch runs next, which status follows) live in modules apart from the API calls.
"""
