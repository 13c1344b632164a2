# The survey seed's curl examples 1-3; tests/test_clients.py replaces only the base URL, the key
# and the <ID> placeholder.
API_KEY=ct_live_<your_key>
curl -k -s -H "Authorization: Bearer $API_KEY" https://localhost:8000/api/surveys/

SURVEY_ID=<ID>
curl -k -s -H "Authorization: Bearer $API_KEY" https://localhost:8000/api/surveys/$SURVEY_ID/

SURVEY_ID=<ID>
curl -k -s -H "Authorization: Bearer $API_KEY" \
  https://localhost:8000/api/surveys/$SURVEY_ID/metrics/responses/
