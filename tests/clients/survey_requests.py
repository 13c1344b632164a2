# The survey seed's Python example (requests); tests/test_clients.py replaces only the base URL, the
# key and the <ID> placeholder.
import requests

base = "https://localhost:8000"
api_key = "ct_live_<your_key>"

session = requests.Session()
session.verify = False  # for local self-signed certs; remove in production
session.headers.update({"Authorization": f"Bearer {api_key}"})

# List surveys
print(session.get(f"{base}/api/surveys/").json())

# Get a specific survey
survey_id = "<ID>"
print(session.get(f"{base}/api/surveys/{survey_id}/").json())

# Get response metrics
print(session.get(f"{base}/api/surveys/{survey_id}/metrics/responses/").json())
