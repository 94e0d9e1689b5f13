-- Cairn's throttle of wrong passwords (Prosody 0.12 has none). Written next to the
-- configuration by `cairn prosody` at every start; edits here are lost.
--
-- Two token buckets per failure: one for the client's address (an IPv6 client by its /64)
-- and the account it names (so a
-- guesser at one account is slowed while the rest of a household behind the same address
-- signs in), one for the address alone (so guessing many account names is slowed too). A
-- failure takes a token; tokens come back one per REFILL seconds up to the burst. While a
-- bucket is empty, SASL attempts from that address (for that account) are refused at once,
-- without checking the password, with the seconds to wait. A success empties nothing but
-- forgets the address-and-account bucket.

local st = require "util.stanza";
local base64 = require "util.encodings".base64;
local now = require "util.time".now;
local new_ip = require "util.ip".new_ip;
local hex = require "util.hex";

local xmlns_sasl = "urn:ietf:params:xml:ns:xmpp-sasl";

local ACCOUNT_BURST, ACCOUNT_REFILL = 10, 30; -- wrong passwords for one account from one address
local ADDRESS_BURST, ADDRESS_REFILL = 30, 10; -- wrong passwords from one address, all accounts
local ENTRIES_MAX = 512; -- buckets kept; beyond, the full ones go, then the oldest
local NAME_BYTES_MAX = 64; -- of an account name as a key

local buckets, count = {}, 0;

-- Tokens left in bucket `key` at `t` (a missing bucket is full).
local function tokens(key, burst, refill, t)
	local b = buckets[key];
	if not b then return burst; end
	return math.min(burst, b.tokens + (t - b.t) / refill);
end

-- Drops the buckets that are full again; if none is, the one touched longest ago.
local function make_room(t)
	local oldest, oldest_t;
	for key, b in pairs(buckets) do
		if b.tokens + (t - b.t) / b.refill >= b.burst then
			buckets[key], count = nil, count - 1;
		elseif not oldest_t or b.t < oldest_t then
			oldest, oldest_t = key, b.t;
		end
	end
	if count >= ENTRIES_MAX and oldest then
		buckets[oldest], count = nil, count - 1;
	end
end

local function take(key, burst, refill, t)
	local left = tokens(key, burst, refill, t) - 1;
	if not buckets[key] then
		if count >= ENTRIES_MAX then make_room(t); end
		count = count + 1;
	end
	buckets[key] = { tokens = left, t = t, burst = burst, refill = refill };
end

local function forget(key)
	if buckets[key] then buckets[key], count = nil, count - 1; end
end

-- The account an initial SASL response names: PLAIN's authcid, SCRAM's n=.
local function account_of(stanza)
	local text = stanza[1] and base64.decode(stanza[1]);
	if not text then return ""; end
	local name = text:match("^[^\0]*\0([^\0]*)\0") or text:match("^[^,]*,[^,]*,n=([^,]*)") or "";
	return name:lower():sub(1, NAME_BYTES_MAX);
end

-- Seconds until both of the address's buckets have a token again (0: go ahead).
local function wait_for(ip, account, t)
	local a = tokens(ip .. " " .. account, ACCOUNT_BURST, ACCOUNT_REFILL, t);
	local b = tokens(ip, ADDRESS_BURST, ADDRESS_REFILL, t);
	local wait = 0;
	if a < 1 then wait = (1 - a) * ACCOUNT_REFILL; end
	if b < 1 then wait = math.max(wait, (1 - b) * ADDRESS_REFILL); end
	return math.ceil(wait);
end

-- A client's key: its IPv4 address, or its IPv6 /64 (one home's prefix holds many addresses).
local function client_of(addr)
	local ip = new_ip(addr);
	if not ip or ip.proto ~= "IPv6" then return addr; end
	return hex.encode(ip.packed:sub(1, 8)) .. "::/64";
end

-- Before mod_saslauth (priority 0) looks at the attempt.
module:hook("stanza/" .. xmlns_sasl .. ":auth", function(event)
	local session = event.origin;
	if session.type ~= "c2s_unauthed" or not session.ip then return; end
	local account = account_of(event.stanza);
	session.cairn_account, session.cairn_client = account, client_of(session.ip);
	local wait = wait_for(session.cairn_client, account, now());
	if wait > 0 then
		module:log("info", "refused a login from %s for %q: too many wrong passwords, %d s to wait",
			session.ip, account, wait);
		session.send(st.stanza("failure", { xmlns = xmlns_sasl })
			:tag("temporary-auth-failure"):up()
			:tag("text"):text(("too many wrong passwords: try again in %d s"):format(wait)));
		return true;
	end
end, 10);

module:hook("authentication-failure", function(event)
	local client = event.session.cairn_client;
	if not client then return; end
	local t = now();
	take(client .. " " .. event.session.cairn_account, ACCOUNT_BURST, ACCOUNT_REFILL, t);
	take(client, ADDRESS_BURST, ADDRESS_REFILL, t);
end);

module:hook("authentication-success", function(event)
	local client = event.session.cairn_client;
	if client then forget(client .. " " .. event.session.cairn_account); end
end);
