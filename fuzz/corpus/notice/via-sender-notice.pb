G
Testperson Andersson198503122387"Exempelv√§gen 1*141 002Huddingeweekdays 09-11*sv"VSamtyckeHThe subject asked for support from social services during the interview.*Inspekt√∂r 4711†œ¸≤¢40:†œ¸≤¢4BJPX†áñ‹¢4bPM-2026-5501j;
Inspekt√∂r 4711Relationsv√•ldsgruppen+46 8 000 000 00r?Subject prefers contact through her sister's phone before noon.