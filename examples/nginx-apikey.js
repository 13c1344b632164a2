// nginx JavaScript (njs) for examples/nginx.conf: what nginx's own variables cannot express.
//
// - Every key a request carries, whichever way it came: nginx's $http_x_api_key is only the first
//   of two X-Api-Key lines, so a request with two different keys would be judged by the first.
//   Here all of them are read; two different values are refused (pg_apikey answers the
//   placeholder with 401 invalid API key); spaces and tabs around a key are not part of it.
// - The Cool Farm Tool's keys as request parameters (api_app_key, api_key: query string or form
//   body) besides its headers.
// - Coldflow's "error" field in every JSON error body: PostgREST keeps only code, message,
//   details and hint of what the database raises.

import qs from 'querystring';

// Placeholders pg_apikey answers with 401 invalid API key (neither is a key of any format).
const CONFLICT = 'conflicting keys';
const MALFORMED = 'malformed key';
// What nginx may put into a header it sends upstream: printable ASCII only. A decoded parameter
// may hold anything, and a CR or LF in a proxied header would start a header or request of the
// client's own making.
const PRINTABLE = /^[\x21-\x7e]{1,512}$/;
// A JWT: three dot-separated base64url parts. Any other bearer token is an API key.
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
// The scheme in any case, then anything: what follows it, trimmed, is the token.
const BEARER = /^bearer([\s\S]*)$/i;
const REASONS = {
    400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
    405: 'Method Not Allowed', 406: 'Not Acceptable', 409: 'Conflict', 413: 'Payload Too Large',
    415: 'Unsupported Media Type', 429: 'Rate limit exceeded', 500: 'Internal Server Error',
    503: 'Service Unavailable',
};

function trimmed(v) {
    return String(v).replace(/^[ \t]+|[ \t]+$/g, '');
}

// The one key a request carries in `values`, '' if none, or a placeholder: two different
// values, or one that is not printable ASCII.
function one(values) {
    const distinct = values.map(trimmed).filter((v) => v !== '');
    if (distinct.length === 0) {
        return '';
    }
    if (!distinct.every((v) => PRINTABLE.test(v))) {
        return MALFORMED;
    }
    return distinct.every((v) => v === distinct[0]) ? distinct[0] : CONFLICT;
}

// Every value or none: a value that cannot be read makes the whole answer the placeholder.
function guarded(f) {
    return (r) => {
        try {
            return f(r);
        } catch (e) {
            return MALFORMED;
        }
    };
}

function headerValues(r, name) {
    return r.rawHeadersIn.filter((h) => h[0].toLowerCase() === name).map((h) => h[1]);
}

// maxKeys 0: every parameter is read (the default stops at 1,000, after which a second key
// would go unseen).
function parsed(text, name) {
    const v = qs.parse(text, '&', '=', { maxKeys: 0 })[name];
    return v === undefined ? [] : [].concat(v);
}

// Only in a location that sets $cft_params (/cft/user/): elsewhere a parameter is the endpoint's.
function keyParameters(r) {
    return r.variables.cft_params === '1';
}

// The client's query string as the location saved it in $client_args before rewriting it away.
function argValues(r, name) {
    return keyParameters(r) ? parsed(r.variables.client_args || '', name) : [];
}

// A form body's fields. The location keeps bodies in memory ($request_body); one written to a
// file cannot be read here, so it is refused rather than ignored.
function formValues(r, name) {
    const type = (r.headersIn['Content-Type'] || '').toLowerCase();
    if (!keyParameters(r) || type.indexOf('application/x-www-form-urlencoded') !== 0) {
        return [];
    }
    if (r.variables.request_body_file) {
        throw new Error('request body in a file');
    }
    return parsed(r.variables.request_body || '', name);
}

// X-Api-Key for PostgREST: every X-Api-Key line and every bearer token that is not a JWT.
function apiKey(r) {
    const bearer = headerValues(r, 'authorization')
        .map((v) => BEARER.exec(v))
        .filter((m) => m)
        .map((m) => m[1].replace(/^\s+|\s+$/g, ''))
        .filter((t) => !JWT.test(t));
    return one(headerValues(r, 'x-api-key').concat(bearer));
}

function cftUserKey(r) {
    return one(headerValues(r, 'x-api-authorization').concat(argValues(r, 'api_key'), formValues(r, 'api_key')));
}

function cftAppKey(r) {
    return one(headerValues(r, 'x-api-app-authorization').concat(argValues(r, 'api_app_key'),
                                                                 formValues(r, 'api_app_key')));
}

// Only JSON error bodies are rewritten; they are small, so they are buffered whole. njs gives each
// request its own copy of this module's variables.
let rewrite = false;
let buffered = '';

function errorHeaders(r) {
    const type = r.headersOut['Content-Type'] || '';
    if (r.status >= 400 && type.indexOf('json') !== -1) {
        rewrite = true;
        delete r.headersOut['Content-Length'];
    }
}

function errorBody(r, data, flags) {
    if (!rewrite) {
        r.sendBuffer(data, flags);
        return;
    }
    buffered += data;
    if (!flags.last) {
        return;
    }
    let out = buffered;
    try {
        const body = JSON.parse(out);
        if (body && typeof body === 'object' && !Array.isArray(body) && 'message' in body && !('error' in body)) {
            const ours = typeof body.code === 'string' && body.code.indexOf('APIKEY') === 0 && body.details;
            body.error = ours ? body.details : (REASONS[r.status] || 'Error');
            out = JSON.stringify(body);
        }
    } catch (e) {
        // Not JSON after all: passed on as it came.
    }
    r.sendBuffer(out, flags);
}

export default {
    apiKey: guarded(apiKey), cftUserKey: guarded(cftUserKey), cftAppKey: guarded(cftAppKey),
    errorHeaders, errorBody,
};
