-- GET: each record is a request path (the base64 OCSPRequest, URL-encoded, after the prefix).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
   local list = {}
   for _, path in ipairs(load_records(args)) do
      list[#list + 1] = wrk.format("GET", path)
   end
   use_requests(list)
end
